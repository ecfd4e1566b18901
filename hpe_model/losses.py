"""RetinaFace multibox loss plus a geodesic pose term.

total = 2 * box + cls + lmk + w_pose * pose. Box and class terms are normalised by the number of
positive anchors, landmarks by the positives whose face has landmarks, pose by the positives whose face
carries a pose. Faces without landmarks / pose (per-face masks, or non-finite values) add nothing there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hpe_data.pose import geodesic, rot6d_to_matrix

from .anchors import cxcywh_to_xyxy
from .box_coder import BoxCoder
from .matcher import match


def geodesic_loss(R_pred: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Per-rotation angle of R_pred @ R_gt.T in radians (clamped acos: finite gradient at identity)."""
    return geodesic(R_pred, R_gt.to(R_pred.dtype))


def _face_fields(targets, device):
    """Concatenate per-face targets over the batch; returns boxes, lmk, has_lmk, rot, has_pose, counts."""
    boxes, lmks, has_lmk, rots, has_pose, counts = [], [], [], [], [], []
    for i, t in enumerate(targets):
        if "boxes" not in t:
            raise ValueError(f"target {i}: missing 'boxes'")
        b = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        f = b.shape[0]
        if f and not bool(((b[:, 2:] > b[:, :2]).all(1) & torch.isfinite(b).all(1)).all()):
            raise ValueError(f"target {i}: boxes must be finite x1, y1, x2, y2 with x2 > x1 and y2 > y1")
        lm = t.get("landmarks5")
        lm = torch.full((f, 5, 2), float("nan"), device=device) if lm is None else \
            torch.as_tensor(lm, dtype=torch.float32, device=device)
        R = t.get("rotation")
        R = torch.full((f, 3, 3), float("nan"), device=device) if R is None else \
            torch.as_tensor(R, dtype=torch.float32, device=device)
        if lm.shape != (f, 5, 2) or R.shape != (f, 3, 3):
            raise ValueError(
                f"target {i}: {f} boxes but landmarks5 {tuple(lm.shape)} (want ({f}, 5, 2)) "
                f"and rotation {tuple(R.shape)} (want ({f}, 3, 3))"
            )
        hl = torch.isfinite(lm).all(-1).all(-1)  # non-finite points count as missing
        hp = torch.isfinite(R).all(-1).all(-1)
        if "has_landmarks" in t:
            hl &= torch.as_tensor(t["has_landmarks"], dtype=torch.bool, device=device).reshape(f)
        if "has_pose" in t:
            hp &= torch.as_tensor(t["has_pose"], dtype=torch.bool, device=device).reshape(f)
        boxes.append(b), lmks.append(lm), has_lmk.append(hl), rots.append(R), has_pose.append(hp), counts.append(f)
    return (torch.cat(boxes), torch.cat(lmks), torch.cat(has_lmk), torch.cat(rots), torch.cat(has_pose), counts)


def hard_negatives(ce: torch.Tensor, labels: torch.Tensor, neg_pos: int) -> torch.Tensor:
    """Per image, the `neg_pos * positives` background anchors with the highest class loss (N, A) bool."""
    with torch.no_grad():
        score = ce.detach().masked_fill(labels > 0, -1.0)
        rank = score.argsort(1, descending=True).argsort(1)
        n_neg = (labels > 0).sum(1, keepdim=True).mul(neg_pos).clamp(max=labels.shape[1] - 1)
        return (rank < n_neg) & (labels == 0)


class RetinaPoseLoss:
    def __init__(self, neg_pos: int = 7, w_pose: float = 1.0, pos_iou: float = 0.35, force_iou: float = 0.2,
                 coder: BoxCoder | None = None):
        self.neg_pos = neg_pos
        self.w_pose = w_pose
        self.pos_iou = pos_iou
        self.force_iou = force_iou
        self.coder = coder or BoxCoder()

    def __call__(self, outputs: dict, targets: list[dict], anchors: torch.Tensor, w_pose: float | None = None) -> dict:
        """outputs: the detector's dict; targets: one dict per image; anchors: (A, 4) cx, cy, w, h.

        Returns box, cls, lmk, pose (with a pose head), total, and num_pos (a count, for logging).
        """
        logits = outputs["cls_logits"].float()
        n_img, n_anc = logits.shape[:2]
        if len(targets) != n_img:
            raise ValueError(f"{len(targets)} targets for a batch of {n_img} images")
        device = logits.device
        anchors = anchors.to(device, torch.float32)
        boxes, lmks, has_lmk, rots, has_pose, counts = _face_fields(targets, device)

        # match each image; positives as flat (image, anchor, face) triples
        anchors_xyxy = cxcywh_to_xyxy(anchors)
        labels = torch.zeros(n_img, n_anc, dtype=torch.long, device=device)
        img, anc, face = [], [], []
        start = 0
        for i, f in enumerate(counts):
            m = match(boxes[start:start + f], anchors_xyxy, self.pos_iou, self.force_iou)
            p = (m >= 0).nonzero().squeeze(1)
            labels[i, p] = 1
            img.append(torch.full_like(p, i)), anc.append(p), face.append(m[p] + start)
            start += f
        img, anc, face = torch.cat(img), torch.cat(anc), torch.cat(face)
        n_pos = max(int(anc.numel()), 1)

        ce = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), reduction="none").reshape(n_img, n_anc)
        keep = (labels > 0) | hard_negatives(ce, labels, self.neg_pos)
        cls = ce[keep].sum() / n_pos

        a = anchors[anc]
        box_t = self.coder.encode(boxes[face], a)
        box = F.smooth_l1_loss(outputs["box_deltas"][img, anc].float(), box_t, reduction="sum") / n_pos

        ml = has_lmk[face]
        lmk_t = self.coder.encode_landmarks(lmks[face[ml]], a[ml])
        lmk_p = outputs["lmk_deltas"][img[ml], anc[ml]].float()
        lmk = F.smooth_l1_loss(lmk_p, lmk_t, reduction="sum") / ml.sum().clamp(min=1)

        parts = {"box": box, "cls": cls, "lmk": lmk}
        total = 2.0 * box + cls + lmk
        if "pose6d" in outputs:
            mp = has_pose[face]
            R_pred = rot6d_to_matrix(outputs["pose6d"][img[mp], anc[mp]].float())
            pose = geodesic_loss(R_pred, rots[face[mp]]).sum() / mp.sum().clamp(min=1)
            parts["pose"] = pose
            total = total + (self.w_pose if w_pose is None else w_pose) * pose
        parts["total"] = total
        parts["num_pos"] = torch.tensor(float(anc.numel()), device=device)
        return parts
