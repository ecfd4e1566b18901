"""Pose-consistent image transforms (conventions §2), shared by the data stages and training augmentation.

Each label transform takes a manifest row (dict) and returns a new row; images are transformed by the matching
image function. Lineage (`sample_id`, `parent_id`, `augment`) is left to the caller.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from . import landmarks as L
from . import pose

BORDERS = {"reflect101": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}


def _set_pose(row: dict, R: np.ndarray) -> None:
    p, y, r = pose.to_euler(R)
    row.update(rotation=R.reshape(9), pitch=float(p), yaw=float(y), roll=float(r),
               in_range=bool(pose.in_range(p, y, r)))


def _points(row: dict, key: str, k: int):
    v = row.get(key)
    return None if v is None else np.asarray(v, dtype=np.float64).reshape(L.N_POINTS, k)


def append_augment(row: dict, op: str, **params) -> str:
    """The row's `augment` JSON list with one more operation."""
    ops = json.loads(row["augment"]) if row.get("augment") else []
    ops.append({"op": op, **params})
    return json.dumps(ops)


def in_frame(pts: np.ndarray, width: int, height: int) -> np.ndarray:
    """Points inside the image (pixel centres are integers, so the frame spans -0.5 .. size - 0.5)."""
    x, y = pts[:, 0], pts[:, 1]
    return np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (y >= -0.5) & (x <= width - 0.5) & (y <= height - 0.5)


def face_box(lm: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box of a face from its 68 landmarks: the points inside the frame, clipped to it."""
    pts = np.asarray(lm, dtype=np.float64).reshape(-1, 2)
    b = L.bbox(pts, in_frame(pts, width, height))
    return np.clip(b, 0, [width - 1, height - 1, width - 1, height - 1])


# ---------------------------------------------------------------- flip


def flip_row(row: dict) -> dict:
    """Labels of the horizontally mirrored image: x' = W - 1 - x, landmarks re-indexed, yaw and roll negated."""
    W = int(row["width"])
    out = dict(row)
    lm = _points(row, "landmarks", 2)
    if lm is not None:
        out["landmarks"] = L.flip_points(lm, W).reshape(-1)
    lm3 = _points(row, "landmarks_3d", 3)
    if lm3 is not None:
        out["landmarks_3d"] = L.flip_points(lm3, W).reshape(-1)
    for key in ("landmark_visible", "occluded"):
        if row.get(key) is not None:
            out[key] = np.asarray(row[key], dtype=bool)[L.FLIP_PERM]
    x1, y1, x2, y2 = np.asarray(row["bbox"], dtype=np.float64)
    out["bbox"] = np.array([W - 1 - x2, y1, W - 1 - x1, y2])
    if row.get("rotation") is not None:
        _set_pose(out, pose.flip(np.asarray(row["rotation"], dtype=np.float64).reshape(3, 3)))
    if row.get("translation") is not None:
        out["translation"] = np.asarray(row["translation"], dtype=np.float64) * [-1, 1, 1]
    if row.get("camera") is not None:
        fx, fy, cx, cy = np.asarray(row["camera"], dtype=np.float64)
        out["camera"] = np.array([fx, fy, W - 1 - cx, cy])
    out["flipped"] = not bool(row.get("flipped") or False)
    return out


def flip_image(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


# ---------------------------------------------------------------- in-plane rotation


def rotation_center(rows: list[dict]) -> tuple[float, float]:
    """Centre for rotating an image: the principal point if a face has a perspective camera, else the image centre."""
    for r in rows:
        if r.get("camera") is not None:
            _, _, cx, cy = np.asarray(r["camera"], dtype=np.float64)
            return float(cx), float(cy)
    r = rows[0]
    return (int(r["width"]) - 1) / 2.0, (int(r["height"]) - 1) / 2.0


def rotate_row(row: dict, theta: float, center) -> dict:
    """Labels after rotating the image `theta` degrees counter-clockwise on screen about `center`.

    R' = Rz(-theta) @ R with angles re-derived, landmarks mapped by the same affine as the image (z kept),
    points leaving the frame marked not visible, box recomputed from the rotated landmarks. With a perspective
    camera the centre must be the principal point, and the translation rotates too.
    """
    W, H = int(row["width"]), int(row["height"])
    M = _affine(theta, center)
    out = dict(row)
    lm = _points(row, "landmarks", 2)
    if lm is not None:
        lm2 = lm @ M[:, :2].T + M[:, 2]
        out["landmarks"] = lm2.reshape(-1)
        inside = in_frame(lm2, W, H)
        vis = np.ones(L.N_POINTS, bool) if row.get("landmark_visible") is None else np.asarray(row["landmark_visible"], bool)
        out["landmark_visible"] = vis & inside
        out["bbox"] = _inside_box(lm2, inside, W, H)
    else:  # no landmarks: the rotated box corners are all we have (a looser box)
        x1, y1, x2, y2 = np.asarray(row["bbox"], dtype=np.float64)
        c = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) @ M[:, :2].T + M[:, 2]
        out["bbox"] = np.clip([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()], 0,
                              [W - 1, H - 1, W - 1, H - 1])
    lm3 = _points(row, "landmarks_3d", 3)
    if lm3 is not None:
        lm3 = lm3.copy()
        lm3[:, :2] = lm3[:, :2] @ M[:, :2].T + M[:, 2]
        out["landmarks_3d"] = lm3.reshape(-1)
    if row.get("rotation") is not None:
        _set_pose(out, pose.rotate_inplane(np.asarray(row["rotation"], dtype=np.float64).reshape(3, 3), theta))
    if row.get("camera") is not None:
        _, _, cx, cy = np.asarray(row["camera"], dtype=np.float64)
        if abs(cx - center[0]) > 1e-6 or abs(cy - center[1]) > 1e-6:
            raise ValueError("a face with a perspective camera must be rotated about the principal point")
        if row.get("translation") is not None:
            t = np.asarray(row["translation"], dtype=np.float64)
            out["translation"] = pose.rotate_inplane(np.eye(3), theta) @ t
    out["rotate_deg"] = float(row.get("rotate_deg") or 0.0) + float(theta)
    return out


def _inside_box(lm: np.ndarray, inside: np.ndarray, width: int, height: int) -> np.ndarray:
    """`face_box(lm, width, height)` when the in-frame test of the points is already done (same numbers)."""
    if not inside.any():
        b = np.full(4, np.nan)
    else:
        p = lm[inside]
        b = np.concatenate([p.min(0), p.max(0)])
    return np.clip(b, 0, [width - 1, height - 1, width - 1, height - 1])


def rotate_image(img: np.ndarray, theta: float, center, border: str = "reflect101",
                 dst: np.ndarray | None = None) -> np.ndarray:
    """The image rotated like `rotate_row` (bilinear, same size).

    dst: an array of the image's shape and type to write into (a stage reuses one per image size: a fresh
    output costs an allocation and its page faults, ~10 % of the warp).
    """
    H, W = img.shape[:2]
    return cv2.warpAffine(img, _affine(theta, center), (W, H), dst=dst, flags=cv2.INTER_LINEAR,
                          borderMode=BORDERS[border])


_GRID = np.arange(16, dtype=np.float64)[:, None]  # sample positions of valid_fraction, as np.linspace makes them


def valid_fraction(box, theta: float, center, width: int, height: int) -> float:
    """Share of `box` in the rotated image that comes from real pixels rather than the border fill.

    Sampled on a 16 x 16 grid over the box (np.linspace spacing), mapped back into the source image.
    """
    b = np.asarray(box, dtype=np.float64)
    lo, hi = b[:2], b[2:]
    delta = hi - lo
    step = delta / 15
    g = _GRID * step  # np.linspace's arithmetic, bit for bit
    if not step.all():  # its special case of a step that underflows to 0
        g = np.where(step == 0, _GRID / 15 * delta, g)
    g += lo
    g[-1] = hi
    pts = np.empty((16, 16, 2))
    pts[..., 0] = g[:, 0]  # rows: y, columns: x (np.meshgrid order)
    pts[..., 1] = g[:, 1, None]
    src = pts.reshape(256, 2) @ (inv := _inverse_affine(theta, center))[:, :2].T + inv[:, 2]
    return float(in_frame(src, width, height).mean())


_AFFINES: dict = {}


def _affine(theta: float, center) -> np.ndarray:
    """pose.inplane_affine, remembered: the label, box and image transforms of one copy share it."""
    key = (float(theta), float(center[0]), float(center[1]))
    M = _AFFINES.get(key)
    if M is None:
        if len(_AFFINES) >= 16:
            _AFFINES.clear()
        M = _AFFINES[key] = pose.inplane_affine(theta, center)
        M.flags.writeable = False  # shared: nobody may change it
    return M


def _inverse_affine(theta: float, center) -> np.ndarray:
    key = ("inv", float(theta), float(center[0]), float(center[1]))
    inv = _AFFINES.get(key)
    if inv is None:
        inv = _AFFINES[key] = cv2.invertAffineTransform(_affine(theta, center))
        inv.flags.writeable = False
    return inv
