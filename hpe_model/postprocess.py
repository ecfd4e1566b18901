"""Decoding and NMS.

`decode` is torch-only and loop-free over anchors (meant to run inside an exported ONNX graph);
`detect` adds the per-image score threshold, top-k, NMS and Euler angles.
"""
from __future__ import annotations

import torch
from torchvision.ops import nms

from hpe_data.pose import rot6d_to_matrix, to_euler

from .box_coder import BoxCoder

_CODER = BoxCoder()


def decode(outputs: dict, anchors: torch.Tensor, coder: BoxCoder | None = None) -> dict:
    """All anchors of the batch: scores (N, A), boxes (N, A, 4) x1y1x2y2, landmarks5 (N, A, 5, 2),
    and rotation (N, A, 3, 3) when the outputs carry pose6d."""
    coder = coder or _CODER
    anchors = anchors.to(outputs["box_deltas"].device, torch.float32)
    out = {
        "scores": outputs["cls_logits"].float().softmax(-1)[..., 1],
        "boxes": coder.decode(outputs["box_deltas"].float(), anchors),
        "landmarks5": coder.decode_landmarks(outputs["lmk_deltas"].float(), anchors),
    }
    if "pose6d" in outputs:
        out["rotation"] = rot6d_to_matrix(outputs["pose6d"].float())
    return out


@torch.no_grad()
def detect(outputs: dict, anchors: torch.Tensor | None = None, score_thresh: float = 0.02,
           pre_nms_top_n: int = 5000, nms_thresh: float = 0.4, keep: int = 750,
           coder: BoxCoder | None = None) -> list[dict]:
    """Per image a dict: boxes (K, 4), scores (K,), landmarks5 (K, 5, 2) and, with a pose head,
    rotation (K, 3, 3) plus pitch/yaw/roll (K,) degrees; sorted by score. `anchors` defaults to
    outputs["anchors"]."""
    if anchors is None:
        anchors = outputs["anchors"]
    dec = decode(outputs, anchors, coder)
    results = []
    for i in range(dec["scores"].shape[0]):
        s = dec["scores"][i]
        idx = (s > score_thresh).nonzero().squeeze(1)
        if idx.numel() > pre_nms_top_n:
            idx = idx[s[idx].topk(pre_nms_top_n).indices]
        kept = idx[nms(dec["boxes"][i, idx], s[idx], nms_thresh)[:keep]]  # nms sorts by score
        r = {k: v[i, kept] for k, v in dec.items()}
        if "rotation" in r:
            r["pitch"], r["yaw"], r["roll"] = to_euler(r["rotation"])
        results.append(r)
    return results
