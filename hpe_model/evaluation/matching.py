"""One-to-one matching of detections to ground-truth faces by box IoU.

Boxes are x1, y1, x2, y2 in continuous pixel coordinates: area = (x2 - x1) * (y2 - y1), no +1.

Greedy by IoU: every (face, detection) pair with IoU >= the threshold is a candidate; candidates are
taken from the highest IoU down, skipping a pair when its face or its detection is already used. Ties in
IoU go to the higher-scoring detection, then to the lower detection index, then to the lower face index,
so the result never depends on sort stability. A face left without a detection is a miss; a detection
(above the score threshold) left without a face is a false positive. Nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou_matrix(a, b) -> np.ndarray:
    """(N, 4) x (M, 4) boxes -> (N, M) intersection over union; 0 where a union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class Match:
    """Result for one image. `pred` indexes the detections as given (before the score filter)."""

    pred: np.ndarray  # (N_gt,) int: matched detection index, -1 for a miss
    iou: np.ndarray  # (N_gt,) float: IoU of the match, NaN for a miss
    false_positives: np.ndarray  # indices of kept detections matched to no face
    kept: np.ndarray  # indices of detections at or above the score threshold

    @property
    def matched(self) -> np.ndarray:
        return self.pred >= 0


def match(gt_boxes, pred_boxes, scores, iou_thresh: float = 0.5, score_thresh: float = 0.5) -> Match:
    """Match detections (score >= score_thresh) to faces one-to-one, greedily by IoU (>= iou_thresh)."""
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"match: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    kept = np.flatnonzero(scores >= score_thresh)
    pred = np.full(len(gt), -1, dtype=np.int64)
    iou_out = np.full(len(gt), np.nan)
    used = np.zeros(boxes.shape[0], dtype=bool)
    if len(gt) and kept.size:
        iou = iou_matrix(gt, boxes[kept])
        gi, pk = np.nonzero(iou >= iou_thresh)
        pi = kept[pk]
        # lexsort: last key is primary -> IoU desc, score desc, detection index asc, face index asc.
        order = np.lexsort((gi, pi, -scores[pi], -iou[gi, pk]))
        for g, p, k in zip(gi[order], pi[order], pk[order]):
            if pred[g] < 0 and not used[p]:
                pred[g], iou_out[g], used[p] = p, iou[g, k], True
    fp = kept[~used[kept]]
    return Match(pred=pred, iou=iou_out, false_positives=fp, kept=kept)
