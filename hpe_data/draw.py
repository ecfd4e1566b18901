"""Drawing on RGB images: landmarks, boxes, pose axes from a rotation matrix, text labels.

Shared by the preview contact sheet, evaluation sheets and prediction output. Every function draws in place on
an (H, W, 3) uint8 RGB array and returns it; colours are RGB tuples; coordinates are 0-based pixels (float ok).

Pose axes are drawn from the stored matrix R_cv (never from Euler angles), projected orthographically: head
axis k lands in the image along (R[0, k], R[1, k]) because the camera frame is x right, y down. x is red, y
green, and the face direction -z blue, so the blue axis must point where the nose points.
"""
from __future__ import annotations

import cv2
import numpy as np

RED, GREEN, BLUE = (230, 40, 40), (40, 200, 40), (40, 90, 255)
AXIS_COLORS = (RED, GREEN, BLUE)  # head x, head y, face direction (-z)
VISIBLE = (255, 220, 0)   # landmark colours
OCCLUDED = (255, 0, 200)  # hidden by a (synthetic) mask
BOX = (0, 230, 230)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def axis_endpoints(R, origin, length: float) -> np.ndarray:
    """(3, 2) image points where the head's x, y and -z axes of `length` pixels end, starting at `origin`.

    R is R_cv (3x3 or 9 numbers, row-major). Orthographic: a foreshortened axis is drawn shorter.
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    dirs = np.stack([R[:2, 0], R[:2, 1], -R[:2, 2]])  # image (x, y) of head x, head y, face direction
    return np.asarray(origin, dtype=np.float64)[:2] + length * dirs


def pose_axes(img: np.ndarray, R, origin, length: float, thickness: int = 2, colors=AXIS_COLORS) -> np.ndarray:
    """Draw the three head axes from `origin` (nose tip or box centre); the face direction is drawn last."""
    ends = axis_endpoints(R, origin, length)
    for end, color in zip(ends, colors):
        cv2.arrowedLine(img, _pt(origin), _pt(end), color, thickness, cv2.LINE_AA, _SHIFT, tipLength=0.15)
    return img


def landmarks(img: np.ndarray, pts, visible=None, occluded=None, radius: float = 2.0, color=VISIBLE,
              occluded_color=OCCLUDED) -> np.ndarray:
    """Draw (N, 2) points: filled where visible, hollow where not visible, in `occluded_color` where occluded.

    `visible`/`occluded` are (N,) bools or None (None: all visible / none occluded). NaN points are skipped.
    """
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    vis = np.ones(n, bool) if visible is None else np.asarray(visible, bool)
    occ = np.zeros(n, bool) if occluded is None else np.asarray(occluded, bool)
    r = int(round(radius * _ONE))
    for p, v, o in zip(pts, vis, occ):
        if not np.isfinite(p).all():
            continue
        cv2.circle(img, _pt(p), r, occluded_color if o else color, -1 if v else 1, cv2.LINE_AA, _SHIFT)
    return img


def box(img: np.ndarray, bbox, color=BOX, thickness: int = 1) -> np.ndarray:
    """Draw an x1, y1, x2, y2 box."""
    b = np.asarray(bbox, dtype=np.float64)
    if np.isfinite(b).all():
        cv2.rectangle(img, _pt(b[:2]), _pt(b[2:]), color, thickness, cv2.LINE_AA, _SHIFT)
    return img


def label(img: np.ndarray, text: str, org, color=WHITE, scale: float = 0.4, background=BLACK) -> np.ndarray:
    """Text with its top-left corner at `org`, on a filled background so it reads on any image."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    x, y = int(org[0]), int(org[1])
    if background is not None:
        cv2.rectangle(img, (x, y), (x + w + 2, y + h + base + 2), background, -1)
    cv2.putText(img, text, (x + 1, y + h + 1), font, scale, color, thick, cv2.LINE_AA)
    return img


def face_origin(row: dict) -> np.ndarray:
    """Where pose axes start for a manifest row: the nose tip (landmark 30) if known, else the box centre."""
    lm = row.get("landmarks")
    if lm is not None:
        nose = np.asarray(lm, dtype=np.float64).reshape(-1, 2)[30]
        if np.isfinite(nose).all():
            return nose
    b = np.asarray(row["bbox"], dtype=np.float64)
    return (b[:2] + b[2:]) / 2


def face(img: np.ndarray, row: dict, scale: float = 1.0, offset=(0.0, 0.0), axis_length: float | None = None,
         radius: float = 2.0) -> np.ndarray:
    """Draw one manifest row (box, landmarks, pose axes from `rotation`) into `img`.

    `scale`/`offset` map the row's pixel coordinates into `img` (p' = p * scale + offset), e.g. for a resized
    crop. Axis length defaults to half the box size.
    """
    off = np.asarray(offset, dtype=np.float64)
    b = np.asarray(row["bbox"], dtype=np.float64) * scale + np.tile(off, 2)
    box(img, b)
    lm = row.get("landmarks")
    if lm is not None:
        pts = np.asarray(lm, dtype=np.float64).reshape(-1, 2) * scale + off
        landmarks(img, pts, row.get("landmark_visible"), row.get("occluded"), radius)
    if row.get("rotation") is not None:
        length = axis_length if axis_length is not None else 0.5 * max(b[2] - b[0], b[3] - b[1], 1.0)
        pose_axes(img, row["rotation"], face_origin(row) * scale + off, length)
    return img
