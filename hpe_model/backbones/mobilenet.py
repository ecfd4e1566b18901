"""MobileNet-0.25 (RetinaFace flavour): depthwise + pointwise blocks, BN, LeakyReLU 0.1.

Three stages give 64/128/256 channels at strides 8/16/32. Small enough for CPU training and tests.
"""
from __future__ import annotations

import torch
from torch import nn

SLOPE = 0.1


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Full 3x3 conv + BN + LeakyReLU (the stem)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(SLOPE, inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.LeakyReLU(SLOPE, inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(SLOPE, inplace=True),
        )


def _stage(cin: int, cout: int, repeats: int) -> list[nn.Module]:
    """One stride-2 block into `cout` channels, then `repeats` stride-1 blocks."""
    return [DepthwiseSeparable(cin, cout, 2)] + [DepthwiseSeparable(cout, cout) for _ in range(repeats)]


class MobileNet025(nn.Module):
    """Returns [C3, C4, C5] feature maps (strides 8, 16, 32)."""

    out_channels = (64, 128, 256)
    ignore_prefixes: tuple[str, ...] = ("fc.",)  # classifier keys a pretrained file may carry

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(  # stride 8, 64 channels
            conv_bn(3, 8, 2),
            DepthwiseSeparable(8, 16),
            *_stage(16, 32, 1),
            *_stage(32, 64, 1),
        )
        self.stage2 = nn.Sequential(*_stage(64, 128, 5))  # stride 16
        self.stage3 = nn.Sequential(*_stage(128, 256, 1))  # stride 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]
