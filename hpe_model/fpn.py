"""Feature pyramid: 1x1 laterals, top-down nearest upsampling to the exact size, 3x3 merges for P3/P4."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv + BN (+ LeakyReLU; slope 0 is ReLU). `act=False` leaves the output linear."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, slope: float = 0.0, act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.LeakyReLU(slope, inplace=True))
        super().__init__(*layers)


class FPN(nn.Module):
    """[C3, C4, C5] -> [P3, P4, P5], each `width` channels. P5 is the lateral alone."""

    def __init__(self, in_channels, width: int, slope: float = 0.0):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, width, 1, slope=slope) for c in in_channels)
        self.merge = nn.ModuleList(ConvBNAct(width, width, 3, slope=slope) for _ in in_channels[:-1])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [m(f) for m, f in zip(self.lateral, feats)]
        out = [lat[-1]]
        for i in range(len(lat) - 2, -1, -1):  # top-down
            up = F.interpolate(out[0], size=lat[i].shape[-2:], mode="nearest")
            out.insert(0, self.merge[i](lat[i] + up))
        return out
