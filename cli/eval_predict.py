"""`hpe-eval predict`: faces and head pose in images, folders and videos (no separate face detector)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import click


def _load(checkpoint: str, backend: str, device: str | None, image_size: int | None, score_thresh: float,
          batch_size: int, tmp: str):
    """A torch Predictor or an OnnxPredictor; a .onnx --checkpoint is used as is, a .pt one is exported."""
    from hpe_model.checkpoint import CheckpointError
    from hpe_model.export import ExportError, OnnxPredictor, export_checkpoint

    size = "model" if image_size is None else (image_size or None)  # 0: native size
    try:
        if backend == "torch":
            if checkpoint.lower().endswith(".onnx"):
                raise click.UsageError(f"{checkpoint}: an ONNX file needs --backend onnx")
            from hpe_model.api import load

            opts = {} if image_size is None else {"input_size": image_size or None}
            return load(checkpoint, device=device or _default_device(), score_thresh=score_thresh,
                        batch_size=batch_size, **opts)
        if device and not device.startswith("cpu"):
            raise click.UsageError("--backend onnx runs on the CPU (onnxruntime CPU provider); drop --device")
        path = checkpoint
        if not checkpoint.lower().endswith(".onnx"):
            path = export_checkpoint(checkpoint, Path(tmp) / "model.onnx", image_size=image_size or None,
                                     dynamic=True, dynamic_size=True)
        return OnnxPredictor(path, input_size=size, score_thresh=score_thresh, batch_size=batch_size)
    except (CheckpointError, ExportError) as e:
        raise click.ClickException(str(e)) from None


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="hpe-train checkpoint (.pt), or an exported .onnx with --backend onnx.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="Faces scoring below this are dropped.")
@click.option("--image-size", type=click.IntRange(min=0), default=None,
              help="Letterbox each image to this long side (default: the checkpoint's / ONNX file's size; "
                   "0: native size, padded to a multiple of 32).")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True)
@click.option("--device", default=None, help="torch device, e.g. cpu, cuda:0 (default: cuda when available).")
@click.option("--no-draw", is_flag=True, help="Skip annotated images and videos (detections only).")
@click.option("--strict", is_flag=True, help="Exit non-zero when any input could not be used.")
def predict(inputs, checkpoint, out, batch_size, score_thresh, image_size, backend, device, no_draw, strict):
    """Detect every face and its head pose in INPUTS (image files, folders searched recursively, video files).

    Writes annotated images and detections.json, per video an annotated .mp4 and a .parquet with one row per
    detection, and errors.csv for inputs, images or frames that could not be read (they are skipped).
    """
    from hpe_model import video

    if image_size is not None and 0 < image_size < 32:
        raise click.UsageError("--image-size must be 0 (native) or at least 32")
    with tempfile.TemporaryDirectory(prefix="hpe-predict-") as tmp:
        predictor = _load(checkpoint, backend, device, image_size, score_thresh, batch_size, tmp)
        meta = {"checkpoint": str(checkpoint), "backend": backend, "score_thresh": score_thresh,
                "input_size": getattr(predictor, "input_size", None)}
        summary = video.run(predictor, list(inputs), out, batch_size=batch_size, draw_outputs=not no_draw,
                            meta=meta)
    click.echo(summary.text())
    if summary.images + summary.videos == 0:
        raise click.ClickException(f"no input could be processed; see {Path(out) / 'errors.csv'}")
    if strict and summary.errors:
        raise click.ClickException(f"{len(summary.errors)} problem(s) with --strict; see {Path(out) / 'errors.csv'}")
