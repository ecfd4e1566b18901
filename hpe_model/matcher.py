"""Anchor <-> face assignment by IoU (RetinaFace rules)."""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

BACKGROUND = -1


def match(gt_boxes: torch.Tensor, anchors_xyxy: torch.Tensor, pos_iou: float = 0.35, force_iou: float = 0.2):
    """Index of the face each anchor is assigned to, or BACKGROUND (-1); shape (A,) long.

    Anchors with IoU >= `pos_iou` take their best face. Each face's best anchor is then forced onto
    that face when the IoU reaches `force_iou`, so small faces still get one positive; a face whose best
    IoU is below `force_iou` gets none.
    """
    a = anchors_xyxy.shape[0]
    matched = torch.full((a,), BACKGROUND, dtype=torch.long, device=anchors_xyxy.device)
    if gt_boxes.numel() == 0:
        return matched
    iou = box_iou(gt_boxes.to(anchors_xyxy.dtype), anchors_xyxy)  # (F, A)
    best_iou, best_face = iou.max(0)  # per anchor
    pos = best_iou >= pos_iou
    matched[pos] = best_face[pos]
    face_best_iou, face_best_anchor = iou.max(1)  # per face
    ok = face_best_iou >= force_iou
    faces = torch.arange(gt_boxes.shape[0], device=matched.device)
    matched[face_best_anchor[ok]] = faces[ok]
    return matched
