"""RetinaPose: RetinaFace (backbone, FPN, SSH, class/box/landmark heads) plus a per-anchor 6D pose head."""
from __future__ import annotations

import torch
from torch import nn

from . import postprocess
from .anchors import AnchorGenerator
from .backbones import FPN_WIDTH, build_backbone
from .box_coder import BoxCoder
from .fpn import FPN
from .heads import Head, PoseHead
from .losses import RetinaPoseLoss
from .ssh import SSH


class RetinaPose(nn.Module):
    """One-stage, detection-free head-pose network.

    Input: (N, 3, H, W) float images, already normalised by the data pipeline.
    `forward` returns cls_logits (N, A, 2), box_deltas (N, A, 4), lmk_deltas (N, A, 10),
    pose6d (N, A, 6) (absent with `pose_head=False`) and anchors (A, 4) cx, cy, w, h pixels for
    this input size, which `loss` and `detect` use.
    """

    def __init__(self, backbone: str = "mobilenet", pose_head: bool = True, pretrained=None):
        super().__init__()
        self.config = {"backbone": backbone, "pose_head": pose_head}  # enough to rebuild from a checkpoint
        self.body = build_backbone(backbone, pretrained)
        width = FPN_WIDTH[backbone]
        slope = 0.1 if width <= 64 else 0.0  # RetinaFace: LeakyReLU 0.1 for the narrow model, ReLU otherwise
        self.anchor_gen = AnchorGenerator()
        self.coder = BoxCoder()
        a, levels = self.anchor_gen.num_anchors, len(self.anchor_gen.strides)
        self.fpn = FPN(self.body.out_channels, width, slope)
        self.ssh = nn.ModuleList(SSH(width, width, slope) for _ in range(levels))
        self.cls_head = Head(width, 2, a, levels)
        self.box_head = Head(width, 4, a, levels)
        self.lmk_head = Head(width, 10, a, levels)
        self.pose_head = PoseHead(width, a, levels) if pose_head else None
        self.criterion = RetinaPoseLoss(coder=self.coder)

    def anchors(self, image_size, device=None) -> torch.Tensor:
        """(A, 4) cx, cy, w, h anchors for an (H, W) input (cached)."""
        return self.anchor_gen(tuple(image_size), device)

    def forward(self, images: torch.Tensor) -> dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        feats = [m(p) for m, p in zip(self.ssh, self.fpn(self.body(images)))]
        out = {
            "cls_logits": self.cls_head(feats),
            "box_deltas": self.box_head(feats),
            "lmk_deltas": self.lmk_head(feats),
        }
        if self.pose_head is not None:
            out["pose6d"] = self.pose_head(feats)
        out["anchors"] = self.anchors(images.shape[-2:], images.device)
        return out

    def loss(self, outputs: dict, targets: list[dict], w_pose: float | None = None) -> dict:
        """Dict of box, cls, lmk, (pose), total, num_pos; see `losses.RetinaPoseLoss`."""
        return self.criterion(outputs, targets, outputs["anchors"], w_pose)

    def detect(self, outputs: dict, **kw) -> list[dict]:
        """`postprocess.detect` with this model's anchors and coder."""
        return postprocess.detect(outputs, outputs["anchors"], coder=self.coder, **kw)
