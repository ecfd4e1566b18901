"""Per-level 1x1 prediction heads; outputs (N, anchors, k) concatenated over levels.

Anchor order inside a level is row-major over locations, then the anchors of one location
(index (i * W + j) * A + a), the same order `anchors.AnchorGenerator` produces.
"""
from __future__ import annotations

import torch
from torch import nn

from hpe_data.pose import matrix_to_rot6d


class Head(nn.Module):
    """One 1x1 conv per level producing `num_anchors * k` channels."""

    def __init__(self, width: int, k: int, num_anchors: int = 2, num_levels: int = 3):
        super().__init__()
        self.k = k
        self.convs = nn.ModuleList(nn.Conv2d(width, num_anchors * k, 1) for _ in range(num_levels))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for conv, f in zip(self.convs, feats):
            y = conv(f)  # (N, A*k, H, W)
            outs.append(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, self.k))
        return torch.cat(outs, 1)


class PoseHead(Head):
    """6 numbers per anchor (two columns of R, see `hpe_data.pose.rot6d_to_matrix`).

    Starts at the frontal pose (R = I: zero weights, identity bias), away from the geodesic's
    singular point at 180 degrees; the weights still get gradients from the features.
    """

    def __init__(self, width: int, num_anchors: int = 2, num_levels: int = 3):
        super().__init__(width, 6, num_anchors, num_levels)
        eye6 = matrix_to_rot6d(torch.eye(3))
        for conv in self.convs:
            nn.init.zeros_(conv.weight)
            with torch.no_grad():
                conv.bias.copy_(eye6.repeat(num_anchors))
