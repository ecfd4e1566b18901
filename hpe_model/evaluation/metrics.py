"""Pose error metrics: pure numpy functions on arrays of rotations and angles (degrees).

The headline metric is the one HopeNet, FSA-Net, 6DRepNet and img2pose report: the plain absolute
difference of each Euler angle, both sides decomposed from their rotation matrices with
`hpe_data.pose.to_euler`, averaged over faces, and `mae` = the mean of the yaw, pitch and roll MAEs.
Two variants are reported beside it only to compare with older numbers, never instead of it:
`wrapped` (min(|d|, 360 - |d|), forgives a flip of 180 degrees) and `misses_as_zero` (a missed face
counts as a 0-degree prediction, which flatters frontal test sets).
"""
from __future__ import annotations

import numpy as np

from hpe_data import pose

ANGLES = ("yaw", "pitch", "roll")
YAW_BINS = (0.0, 30.0, 60.0, 90.0)  # |yaw| bins [0,30), [30,60), [60,90], (90, inf)
YAW_BIN_LABELS = ("0-30", "30-60", "60-90", ">90")


class EvaluationError(ValueError):
    """Input the evaluation cannot use (manifests, predictor output, protocol); the message says why."""


def euler(R) -> np.ndarray:
    """(..., 3, 3) R_cv -> (..., 3) angles in degrees, ordered (yaw, pitch, roll)."""
    p, y, r = pose.to_euler(np.asarray(R, dtype=np.float64))
    return np.stack([y, p, r], -1)


def plain_error(pred, gt) -> np.ndarray:
    """|pred - gt| elementwise (degrees), no wrap: 179 vs -179 is 358."""
    return np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(gt, dtype=np.float64))


def wrapped_error(pred, gt) -> np.ndarray:
    """Angular difference on the circle: min(|d|, 360 - |d|) with d taken modulo 360; 179 vs -179 is 2."""
    d = np.mod(plain_error(pred, gt), 360.0)
    return np.minimum(d, 360.0 - d)


def geodesic_deg(R_pred, R_gt) -> np.ndarray:
    """Rotation angle of R_pred @ R_gt.T in degrees (0..180): the convention-free error."""
    return np.asarray(pose.geodesic_deg(np.asarray(R_pred, np.float64), np.asarray(R_gt, np.float64)))


def face_errors(R_pred, R_gt) -> dict[str, np.ndarray]:
    """Per-face errors for matched faces: Euler angles of both sides, plain and wrapped errors, geodesic.

    Returns arrays keyed `pred_yaw`, `gt_yaw`, `err_yaw`, `err_yaw_wrapped` (same for pitch, roll),
    `err_mean` (mean of the three plain errors), `err_mean_wrapped` and `geodesic`.
    """
    R_pred = np.asarray(R_pred, dtype=np.float64).reshape(-1, 3, 3)
    R_gt = np.asarray(R_gt, dtype=np.float64).reshape(-1, 3, 3)
    if R_pred.shape != R_gt.shape:
        raise ValueError(f"face_errors: {R_pred.shape[0]} predicted vs {R_gt.shape[0]} true rotations")
    ep, eg = euler(R_pred), euler(R_gt)
    plain, wrapped = plain_error(ep, eg), wrapped_error(ep, eg)
    out = {}
    for i, a in enumerate(ANGLES):
        out[f"pred_{a}"], out[f"gt_{a}"] = ep[:, i], eg[:, i]
        out[f"err_{a}"], out[f"err_{a}_wrapped"] = plain[:, i], wrapped[:, i]
    out["err_mean"] = plain.mean(1)
    out["err_mean_wrapped"] = wrapped.mean(1)
    out["geodesic"] = geodesic_deg(R_pred, R_gt)
    return out


def misses_as_zero(err, gt, matched) -> np.ndarray:
    """Errors where a missed face counts as predicting 0 degrees: |gt| for misses, `err` for matches.

    err, gt: (N, ...) arrays (NaN allowed where unmatched); matched: (N,) bool.
    """
    err, gt = np.asarray(err, np.float64), np.asarray(gt, np.float64)
    m = np.asarray(matched, bool).reshape((-1,) + (1,) * (err.ndim - 1))
    return np.where(m, err, np.abs(gt))


def mean(x) -> float | None:
    """Mean ignoring NaN; None when nothing is left (JSON has no NaN)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def median(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def yaw_bin(yaw) -> np.ndarray:
    """Label of the |yaw| bin for each angle: '0-30', '30-60', '60-90' (90 included), '>90'; '' for NaN."""
    a = np.abs(np.asarray(yaw, dtype=np.float64))
    idx = np.digitize(a, YAW_BINS[1:], right=False)  # 0..3 with edges at 30, 60, 90 (left-closed)
    idx = np.where(a == 90.0, 2, idx)  # exactly 90 stays in 60-90; '>90' means beyond profile
    labels = np.array(YAW_BIN_LABELS, dtype=object)[np.clip(idx, 0, 3)]
    return np.where(np.isfinite(a), labels, "").astype(object)


def cdf(values, thresholds) -> np.ndarray:
    """Share of finite values <= each threshold (the accuracy curve of the geodesic-error plot)."""
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    if not v.size:
        return np.full(len(thresholds), np.nan)
    return np.searchsorted(v, np.asarray(thresholds, dtype=np.float64), side="right") / v.size


def summarize(faces: dict[str, np.ndarray]) -> dict:
    """Aggregate per-face columns (as built by the runner) into the report numbers.

    Needs `matched` (bool), `has_pose` (bool), the `err_*`, `geodesic` and `gt_*` columns. Pose metrics
    average over matched faces that carry a true pose; detection rate is matched / all faces.
    """
    matched = np.asarray(faces["matched"], bool)
    has_pose = np.asarray(faces["has_pose"], bool)
    n = int(matched.size)
    sel = matched & has_pose
    out: dict = {
        "n_faces": n,
        "n_matched": int(matched.sum()),
        "n_missed": int(n - matched.sum()),
        "detection_rate": float(matched.mean()) if n else None,
        "n_pose": int(sel.sum()),
    }
    maes = [mean(np.asarray(faces[f"err_{a}"])[sel]) for a in ANGLES]
    for a, v in zip(ANGLES, maes):
        out[f"mae_{a}"] = v
    out["mae"] = float(np.mean(maes)) if all(v is not None for v in maes) else None
    wr = [mean(np.asarray(faces[f"err_{a}_wrapped"])[sel]) for a in ANGLES]
    for a, v in zip(ANGLES, wr):
        out[f"mae_{a}_wrapped"] = v
    out["mae_wrapped"] = float(np.mean(wr)) if all(v is not None for v in wr) else None
    geo = np.asarray(faces["geodesic"])[sel]
    out["geodesic"] = mean(geo)
    out["geodesic_median"] = median(geo)
    # Misses as 0 degrees: over every face with a pose, matched or not.
    mz = [
        mean(misses_as_zero(np.asarray(faces[f"err_{a}"])[has_pose], np.asarray(faces[f"gt_{a}"])[has_pose],
                            matched[has_pose]))
        for a in ANGLES
    ]
    for a, v in zip(ANGLES, mz):
        out[f"mae_{a}_misses_as_zero"] = v
    out["mae_misses_as_zero"] = float(np.mean(mz)) if all(v is not None for v in mz) else None
    return out
