"""68-point landmark facts (iBUG order, 0-based): groups, mirror re-indexing, 5-point set, boxes."""
from __future__ import annotations

import numpy as np

N_POINTS = 68

GROUPS = {
    "jaw": range(0, 17),
    "right_brow": range(17, 22),
    "left_brow": range(22, 27),
    "nose_bridge": range(27, 31),
    "lower_nose": range(31, 36),
    "right_eye": range(36, 42),
    "left_eye": range(42, 48),
    "outer_lip": range(48, 60),
    "inner_lip": range(60, 68),
}

# Index i of the mirrored face is index FLIP_PERM[i] of the original (left and right swap).
FLIP_PERM = np.array(
    list(range(16, -1, -1))
    + list(range(26, 16, -1))
    + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60, 67, 66, 65]
)

# RetinaFace order, image-left first on a frontal face: eye centres, nose tip, mouth corners.
FIVE_POINT_NAMES = ("eye_a", "eye_b", "nose", "mouth_a", "mouth_b")


def five_points(lm: np.ndarray) -> np.ndarray:
    """(68, 2) -> (5, 2): eye centres (36-41, 42-47), nose tip 30, mouth corners 48, 54."""
    lm = np.asarray(lm, dtype=np.float64).reshape(N_POINTS, -1)[:, :2]
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def bbox(lm: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Tight x1, y1, x2, y2 around the (visible, finite) landmarks; NaN box when none qualifies."""
    lm = np.asarray(lm, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(lm).all(1)
    if visible is not None:
        ok &= np.asarray(visible, dtype=bool)
    if not ok.any():
        return np.full(4, np.nan)
    p = lm[ok]
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])


def flip_points(lm: np.ndarray, width: int) -> np.ndarray:
    """Mirror (68, k) landmarks in an image of `width` pixels: x' = W - 1 - x, then re-index."""
    lm = np.array(lm, dtype=np.float64).reshape(N_POINTS, -1)
    lm[:, 0] = width - 1 - lm[:, 0]
    return lm[FLIP_PERM]
