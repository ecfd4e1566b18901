"""Square RetinaFace anchors: sizes {16,32} @ stride 8, {64,128} @ 16, {256,512} @ 32.

Anchors are (cx, cy, w, h) in input pixels with centres at ((j + 0.5) * stride, (i + 0.5) * stride);
a level has ceil(H / stride) x ceil(W / stride) locations, which is what the stride-2 convs of both
backbones produce. 640x640 -> 16,800 anchors, 256x256 -> 2,688.
"""
from __future__ import annotations

import math

import torch

SIZES = ((16, 32), (64, 128), (256, 512))
STRIDES = (8, 16, 32)


def grid_size(image_size, stride: int) -> tuple[int, int]:
    h, w = image_size
    return math.ceil(h / stride), math.ceil(w / stride)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    half = b[..., 2:] / 2
    return torch.cat([b[..., :2] - half, b[..., :2] + half], -1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


class AnchorGenerator:
    """Callable `(image_size, device, dtype) -> (A, 4)` cx, cy, w, h anchors, cached per size/device/dtype."""

    def __init__(self, sizes=SIZES, strides=STRIDES):
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} size groups for {len(strides)} strides")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.strides = tuple(strides)
        self._cache: dict = {}

    @property
    def num_anchors(self) -> int:
        """Anchors per location (the heads assume the same count on every level)."""
        return len(self.sizes[0])

    def count(self, image_size) -> int:
        return sum(math.prod(grid_size(image_size, s)) * len(z) for z, s in zip(self.sizes, self.strides))

    def __call__(self, image_size, device=None, dtype=torch.float32) -> torch.Tensor:
        h, w = int(image_size[0]), int(image_size[1])
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = torch.cat(
                [self._level((h, w), st, sz, device, dtype) for sz, st in zip(self.sizes, self.strides)]
            )
        return self._cache[key]

    @staticmethod
    def _level(image_size, stride, sizes, device, dtype) -> torch.Tensor:
        gh, gw = grid_size(image_size, stride)
        cy = (torch.arange(gh, device=device, dtype=dtype) + 0.5) * stride
        cx = (torch.arange(gw, device=device, dtype=dtype) + 0.5) * stride
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # row-major locations
        s = torch.tensor(sizes, device=device, dtype=dtype)
        a = len(sizes)
        cx = cx.reshape(-1, 1).expand(-1, a)
        cy = cy.reshape(-1, 1).expand(-1, a)
        s = s.reshape(1, -1).expand(cx.shape[0], -1)
        return torch.stack([cx, cy, s, s], -1).reshape(-1, 4)
