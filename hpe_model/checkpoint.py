"""Training checkpoints: plain dicts of tensors and Python scalars, written atomically, read with
`torch.load(..., weights_only=True)` (no pickled objects, so loading a file never runs its code).

Layout (schema 1): {"schema": "hpe-checkpoint", "schema_version": 1, "config": {...}, "model": state_dict,
"epoch": finished epochs, "step": global optimizer steps, "epoch_step": steps done in the current epoch,
"optimizer", "scaler", "schedule", "rng", "best", "history", "sums", and "ema" (weight moving average)
when training kept one}. Inference needs config + ema (else model)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

SCHEMA = "hpe-checkpoint"
SCHEMA_VERSION = 1


class CheckpointError(ValueError):
    pass


def save(state: dict, path: str | os.PathLike) -> Path:
    """torch.save under a temporary name in the same folder, fsync, rename: never half a file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and check a checkpoint; refuses other schema versions and files that are not checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, or pickled objects weights_only refuses
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("schema") != SCHEMA:
        raise CheckpointError(f"{path}: not an hpe-train checkpoint (no '{SCHEMA}' schema key)")
    version = state.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: checkpoint schema version {version!r}, this toolkit reads version "
                              f"{SCHEMA_VERSION}; retrain or convert it")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return state


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
