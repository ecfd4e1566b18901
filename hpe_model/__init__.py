"""hpe_model: the one-stage, detection-free head-pose network (RetinaFace + 6D pose head)."""
from .anchors import AnchorGenerator
from .api import Predictor, load
from .box_coder import BoxCoder
from .detector import RetinaPose
from .losses import RetinaPoseLoss, geodesic_loss
from .matcher import match
from .postprocess import decode, detect

__all__ = ["AnchorGenerator", "BoxCoder", "Predictor", "load", "RetinaPose", "RetinaPoseLoss", "decode", "detect", "geodesic_loss", "match"]
