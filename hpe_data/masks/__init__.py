"""Pose-aware synthetic face masks with per-landmark occlusion labels (`hpe-data build-masked`).

geometry: mask surface and face proxy from a face's 3D landmarks; styles: kinds, colours, textures;
composite: texture, shading from the face, blur/noise matching and blending; stage: the runner stage.
"""
from .stage import FaceMask, Unmaskable, build_masked, mask_face, mask_item, output_name
from .styles import COVERAGE_MODES, PROFILES, Style, parse_coverage, parse_styles, sample_style

__all__ = ["COVERAGE_MODES", "FaceMask", "PROFILES", "Style", "Unmaskable", "build_masked", "mask_face",
           "mask_item", "output_name", "parse_coverage", "parse_styles", "sample_style"]
