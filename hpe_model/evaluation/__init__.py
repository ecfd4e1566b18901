"""Detection-free evaluation: match detections to faces, score pose under the published protocols, report.

`evaluate(predictor, manifests, out_dir, ...)` is the entry point; `metrics` and `matching` are pure functions.
"""
from .matching import Match, iou_matrix, match
from .metrics import (EvaluationError, face_errors, geodesic_deg, misses_as_zero, plain_error, summarize,
                      wrapped_error, yaw_bin)
from .runner import Predictor, evaluate, load_faces

__all__ = ["EvaluationError", "Match", "Predictor", "evaluate", "face_errors", "geodesic_deg", "iou_matrix",
           "load_faces", "match", "misses_as_zero", "plain_error", "summarize", "wrapped_error", "yaw_bin"]
