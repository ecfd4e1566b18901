"""Backbone registry and local-only weight loading (nothing is ever downloaded)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .mobilenet import MobileNet025
from .resnet import ResNet50

BACKBONES = {"mobilenet": MobileNet025, "resnet50": ResNet50}
FPN_WIDTH = {"mobilenet": 64, "resnet50": 256}


def load_pretrained(body: nn.Module, path, what: str) -> nn.Module:
    """Load a local state dict into `body`; keys under `body.ignore_prefixes` (classifier) may be absent."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} pretrained weights not found: '{p.name}' (looked for {p.resolve()}). "
            "Weights are never downloaded; copy the file there or pass pretrained=<path to a local state dict>."
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with arbitrary objects, ...
        raise ValueError(f"{p}: cannot read as a torch state dict ({e})") from e
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{p}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignore = getattr(body, "ignore_prefixes", ())
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{p}: does not match the {what} backbone ({e})") from e
    if missing or unexpected:
        raise ValueError(
            f"{p}: does not match the {what} backbone "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    return body


def build_backbone(name: str, pretrained=None) -> nn.Module:
    """`name` in BACKBONES; `pretrained` is None or a local file path (FileNotFoundError if missing)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {sorted(BACKBONES)}")
    body = BACKBONES[name]()
    if pretrained is not None:
        load_pretrained(body, pretrained, name)
    return body


__all__ = ["BACKBONES", "FPN_WIDTH", "MobileNet025", "ResNet50", "build_backbone", "load_pretrained"]
