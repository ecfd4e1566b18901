"""RetinaFace box and landmark encoding relative to (cx, cy, w, h) anchors.

Box: centre offset / (0.1 * anchor size), log size ratio / 0.2. Landmarks: offset from the anchor
centre / (0.1 * anchor size). All functions broadcast: anchors (A, 4) against (..., A, k).
Torch-only and loop-free so decoding can live inside an exported ONNX graph.
"""
from __future__ import annotations

import torch


class BoxCoder:
    def __init__(self, center_var: float = 0.1, size_var: float = 0.2):
        self.center_var = center_var
        self.size_var = size_var

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """x1y1x2y2 boxes (..., A, 4) -> deltas (..., A, 4)."""
        c = (boxes[..., :2] + boxes[..., 2:]) / 2
        wh = boxes[..., 2:] - boxes[..., :2]
        d_c = (c - anchors[..., :2]) / (self.center_var * anchors[..., 2:])
        d_wh = torch.log(wh / anchors[..., 2:]) / self.size_var
        return torch.cat([d_c, d_wh], -1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """deltas (..., A, 4) -> x1y1x2y2 boxes (..., A, 4)."""
        c = anchors[..., :2] + deltas[..., :2] * self.center_var * anchors[..., 2:]
        wh = anchors[..., 2:] * torch.exp(deltas[..., 2:] * self.size_var)
        return torch.cat([c - wh / 2, c + wh / 2], -1)

    def encode_landmarks(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., A, P, 2) pixel points -> (..., A, 2P) deltas."""
        d = (points - anchors[..., None, :2]) / (self.center_var * anchors[..., None, 2:])
        return d.flatten(-2)

    def decode_landmarks(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., A, 2P) deltas -> (..., A, P, 2) pixel points."""
        d = deltas.unflatten(-1, (-1, 2))
        return anchors[..., None, :2] + d * self.center_var * anchors[..., None, 2:]
