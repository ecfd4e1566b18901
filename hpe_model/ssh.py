"""SSH context module: concat of 3x3, "5x5" (two 3x3) and "7x7" (three 3x3) branches, then ReLU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fpn import ConvBNAct


class SSH(nn.Module):
    """Half the output channels from a 3x3 branch, a quarter each from the 5x5 and 7x7 branches.

    The 7x7 branch reuses the first 3x3 of the 5x5 branch; branch outputs are linear, the sum is ReLU'd.
    """

    def __init__(self, cin: int, cout: int, slope: float = 0.0):
        super().__init__()
        if cout % 4:
            raise ValueError(f"SSH output channels must be divisible by 4, got {cout}")
        q = cout // 4
        self.conv3 = ConvBNAct(cin, 2 * q, act=False)
        self.conv5_1 = ConvBNAct(cin, q, slope=slope)
        self.conv5_2 = ConvBNAct(q, q, act=False)
        self.conv7_2 = ConvBNAct(q, q, slope=slope)
        self.conv7_3 = ConvBNAct(q, q, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.conv3(x)
        t = self.conv5_1(x)
        b5 = self.conv5_2(t)
        b7 = self.conv7_3(self.conv7_2(t))
        return F.relu(torch.cat([b3, b5, b7], 1))
