"""`hpe-eval export`: the network plus box/landmark/pose decoding as one ONNX graph (NMS stays outside)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False), help="hpe-train checkpoint.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--image-size", type=click.IntRange(min=32), default=None,
              help="Square input size (default: the checkpoint's inference size, else 640).")
@click.option("--dynamic", is_flag=True, help="Symbolic batch dimension.")
@click.option("--dynamic-size", is_flag=True,
              help="Symbolic height and width too (implies --dynamic); anchors are computed in the graph.")
@click.option("--opset", type=click.IntRange(min=13), default=17, show_default=True)
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the file under onnxruntime on two random images and compare with PyTorch.")
def export(checkpoint, out, image_size, dynamic, dynamic_size, opset, verify):
    """Export CHECKPOINT to ONNX: uint8 RGB (N, 3, H, W) letterboxed images in; per anchor scores, boxes,
    landmarks5, rotation (3x3 R_cv) and yaw/pitch/roll (degrees) out. Score threshold and NMS are a post-step
    (hpe_model.export.select / OnnxPredictor)."""
    from hpe_model.checkpoint import CheckpointError
    from hpe_model.export import ExportError, export_checkpoint, verify_onnx

    try:
        path = export_checkpoint(checkpoint, out, image_size=image_size, dynamic=dynamic,
                                 dynamic_size=dynamic_size, opset=opset)
    except (CheckpointError, ExportError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path} ({Path(path).stat().st_size / 1e6:.1f} MB, opset {opset}, "
               f"{'dynamic H/W' if dynamic_size else 'dynamic batch' if dynamic else 'static shape'}); "
               f"onnx.checker passed")
    if verify:
        from hpe_model.api import load

        diffs = verify_onnx(load(checkpoint, device="cpu"), path)
        click.echo("max |onnx - torch| over anchors: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
