"""Full-frame, detection-free evaluation: whole images in, every ground-truth face matched or counted missed.

No crop and no external face detector: the predictor sees the full image (optionally scaled so its long
side is `image_size`, aspect kept), its detections are matched to the manifest's faces by IoU, and the
report says how many faces were found besides how well their pose was estimated.
"""
from __future__ import annotations

import os
import sys
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np
from tqdm import tqdm

import manifests
from hpe_data import pose
from hpe_data.imageio import ImageError, read_rgb

from . import metrics
from .matching import match


class Predictor(Protocol):
    def predict(self, images: list[np.ndarray]) -> list[dict]:
        """RGB uint8 images -> per image: boxes (K,4) x1y1x2y2 px, scores (K,), rotation (K,3,3) R_cv,
        landmarks5 (K,5,2). Coordinates are in the pixels of the image passed in."""


_COLUMNS = ("sample_id", "image_path", "dataset", "subject", "sequence", "split", "mask", "rotate_deg",
            "in_range", "yaw", "pitch", "roll", "width", "height")


def _numpy(x, shape_tail: tuple, n: int | None = None) -> np.ndarray:
    """Tensor or array-like -> float64 numpy of shape (K, *shape_tail)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    k = n if n is not None else (a.shape[0] if a.ndim else 0)
    return a.reshape((k,) + shape_tail)


def _faces_of(path: Path, table) -> list[dict]:
    """Face records (ground truth only) for one manifest."""
    cols = {c: (table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows)
            for c in _COLUMNS}
    boxes = manifests.to_numpy(table, "bbox").astype(np.float64)
    R = manifests.to_numpy(table, "rotation").astype(np.float64).reshape(-1, 3, 3)
    labels = np.array([[np.nan if v is None else v for v in cols[a]] for a in ("pitch", "yaw", "roll")],
                      dtype=np.float64).T.reshape(-1, 3)
    # A row with angles but no matrix: build it here through the pose module (the one convention).
    fill = ~np.isfinite(R).all((1, 2)) & np.isfinite(labels).all(1)
    if fill.any():
        R[fill] = pose.to_matrix(labels[fill, 0], labels[fill, 1], labels[fill, 2])
    has_pose = np.isfinite(R).all((1, 2))
    rng_labels = pose.in_range(labels[:, 0], labels[:, 1], labels[:, 2])
    eg = metrics.euler(np.where(has_pose[:, None, None], R, np.eye(3)))
    rng_euler = pose.in_range(eg[:, 1], eg[:, 0], eg[:, 2])
    out = []
    for i in range(table.num_rows):
        ir = cols["in_range"][i]
        if ir is None:  # the flag as the importer would have written it, else from the matrix
            if np.isfinite(labels[i]).all():
                ir = bool(rng_labels[i])
            elif has_pose[i]:
                ir = bool(rng_euler[i])
        rot = cols["rotate_deg"][i]
        label_yaw = labels[i, 1] if np.isfinite(labels[i, 1]) else (eg[i, 0] if has_pose[i] else np.nan)
        out.append({
            "sample_id": cols["sample_id"][i],
            "manifest": str(path),
            "image_path": cols["image_path"][i],
            "image_file": str(manifests.resolve_image(path, cols["image_path"][i])),
            "dataset": cols["dataset"][i],
            "subject": cols["subject"][i],
            "sequence": cols["sequence"][i],
            "split": cols["split"][i],
            "mask": cols["mask"][i],
            "masked": cols["mask"][i] is not None,
            "rotate_deg": np.nan if rot is None else float(rot),
            "rotated": rot is not None and float(rot) != 0.0,
            "in_range": ir,
            "label_yaw": labels[i, 1], "label_pitch": labels[i, 0], "label_roll": labels[i, 2],
            "yaw_bin": metrics.yaw_bin(label_yaw).item(),
            "width": cols["width"][i], "height": cols["height"][i],
            "gt_box": boxes[i],
            "gt_rotation": R[i],
            "has_pose": bool(has_pose[i]),
        })
    return out


def load_faces(manifest_paths: Sequence[str | os.PathLike]) -> list[dict]:
    faces = []
    for p in manifest_paths:
        p = Path(p)
        faces.extend(_faces_of(p, manifests.read(p)))
    counts = Counter(f["sample_id"] for f in faces)
    if len(counts) != len(faces):
        dup = next(i for i, c in counts.items() if c > 1)
        raise metrics.EvaluationError(f"sample_id {dup!r} occurs in more than one manifest; evaluate them separately")
    return faces


def _load(item, image_size):
    """(image, scale) for one image group; image None with a reason on failure."""
    _, faces = item
    path = faces[0]["image_file"]
    try:
        img = read_rgb(path)
    except ImageError as e:  # the error list holds (path, reason): keep the reason only
        return None, 1.0, str(e).removeprefix(f"{path}: ")
    h, w = img.shape[:2]
    W, H = faces[0]["width"], faces[0]["height"]
    if (W, H) != (w, h):
        return None, 1.0, f"image is {w}x{h} but the manifest says {W}x{H}"
    scale = 1.0
    if image_size:
        scale = float(image_size) / max(h, w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return img, scale, None


def _parse(det: dict, scale: float, where: str) -> dict:
    if not isinstance(det, dict) or "boxes" not in det or "scores" not in det:
        raise metrics.EvaluationError(f"predictor output for {where} must be a dict with 'boxes' and 'scores'")
    try:
        boxes = _numpy(det["boxes"], (4,))
        k = boxes.shape[0]
        out = {"boxes": boxes / scale, "scores": _numpy(det["scores"], (), k)}
        out["rotation"] = _numpy(det["rotation"], (3, 3), k) if det.get("rotation") is not None \
            else np.full((k, 3, 3), np.nan)
        out["landmarks5"] = _numpy(det["landmarks5"], (5, 2), k) / scale if det.get("landmarks5") is not None \
            else np.full((k, 5, 2), np.nan)
    except ValueError as e:  # shapes that do not agree with the K boxes
        raise metrics.EvaluationError(f"predictor output for {where}: {e}") from None
    return out


def evaluate(predictor: Predictor, manifest_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
             batch_size: int = 8, image_size: int | None = None, score_thresh: float = 0.5,
             iou_thresh: float = 0.5, protocol: str = "none", workers: int = 2, worst_k: int = 16,
             progress: bool = True, meta: dict | None = None, echo=None) -> dict:
    """Run `predictor` on every image of the manifests, match, and write the report into `out_dir`.

    Returns the report dict (also `out_dir/report.json`). `echo` (e.g. click.echo) receives the
    markdown summary; None prints nothing.
    """
    from . import report as rep

    if protocol not in rep.PROTOCOLS:
        raise metrics.EvaluationError(f"unknown protocol {protocol!r}; expected one of {sorted(rep.PROTOCOLS)}")
    faces = load_faces(manifest_paths)
    groups: dict[tuple, list[dict]] = {}
    for f in faces:
        groups.setdefault((f["manifest"], f["image_path"]), []).append(f)
    items = sorted(groups.items(), key=lambda kv: kv[0])

    fps, errors, evaluated = [], [], []
    bar = tqdm(total=len(items), desc="eval", unit="img", disable=not progress or None, file=sys.stderr)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        loaded = _prefetch(pool, items, image_size, ahead=2 * batch_size + workers)
        batch: list = []
        for item, (img, scale, err) in zip(items, loaded):
            if err is not None:
                errors.append((item[1][0]["image_file"], err))
                bar.update(1)
                continue
            batch.append((item, img, scale))
            if len(batch) == batch_size:
                evaluated += _run_batch(predictor, batch, fps, score_thresh, iou_thresh)
                bar.update(len(batch))
                batch = []
        if batch:
            evaluated += _run_batch(predictor, batch, fps, score_thresh, iou_thresh)
            bar.update(len(batch))
    bar.close()
    n_skipped = len(faces) - len(evaluated)
    meta = {**(meta or {}), "manifests": [str(p) for p in manifest_paths], "score_thresh": score_thresh,
            "iou_thresh": iou_thresh, "image_size": image_size, "batch_size": batch_size,
            "n_images": len(items) - len(errors), "n_image_errors": len(errors),
            "n_faces_unreadable": n_skipped}
    return rep.write_report(out_dir, evaluated, fps, errors, protocol=protocol, meta=meta, worst_k=worst_k,
                            echo=echo)


def _prefetch(pool, items, image_size, ahead: int):
    """Decode images in background threads, at most `ahead` in flight (a whole dataset would not fit in memory)."""
    queue = deque()
    it = iter(items)
    for item in it:
        queue.append(pool.submit(_load, item, image_size))
        if len(queue) >= ahead:
            break
    while queue:
        yield queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(_load, nxt, image_size))


def _run_batch(predictor, batch, fps, score_thresh, iou_thresh) -> list[dict]:
    # hpe_model.load() predictors expose per-image arrays as predict_arrays (their predict returns face lists)
    run = getattr(predictor, "predict_arrays", None) or predictor.predict
    dets = run([img for _, img, _ in batch])
    if len(dets) != len(batch):
        raise metrics.EvaluationError(f"predictor returned {len(dets)} results for {len(batch)} images")
    done = []
    for ((key, faces), _, scale), det in zip(batch, dets):
        d = _parse(det, scale, faces[0]["image_file"])
        m = match(np.stack([f["gt_box"] for f in faces]), d["boxes"], d["scores"], iou_thresh, score_thresh)
        for j, f in enumerate(faces):
            p = int(m.pred[j])
            hit = p >= 0
            rec = dict(f, matched=hit, iou=float(m.iou[j]),
                       score=float(d["scores"][p]) if hit else np.nan,
                       pred_box=d["boxes"][p] if hit else np.full(4, np.nan),
                       pred_rotation=d["rotation"][p] if hit else np.full((3, 3), np.nan),
                       pred_landmarks5=d["landmarks5"][p] if hit else np.full((5, 2), np.nan))
            done.append(rec)
        for p in m.false_positives:
            fps.append({"manifest": faces[0]["manifest"], "image_path": faces[0]["image_path"],
                        "image_file": faces[0]["image_file"], "score": float(d["scores"][p]),
                        "box": d["boxes"][p]})
    return done
