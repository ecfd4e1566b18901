"""hpe_data: dataset importers, pose-consistent transforms, synthetic data and masks for head-pose estimation."""
__version__ = "0.1.0"
