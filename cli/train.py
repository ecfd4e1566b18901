"""`hpe-train`: train the one-stage head-pose network on full frames from Parquet manifests.

Single process:   hpe-train --manifest train.parquet --val-manifest val.parquet --out runs/x
Several GPUs/CPUs: torchrun --nproc_per_node 2 -m cli.train --manifest ... (global batch = batch x processes)
"""
from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--manifest", "manifest", multiple=True, required=True,
              help="training manifest, repeatable; M:W gives manifest M the share W/sum(W) of each epoch "
                   "(without weights every image is seen once per epoch)")
@click.option("--val-manifest", type=click.Path(exists=True), default=None,
              help="full-frame validation manifest: val MAE and detection rate each epoch, picks best.pt")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder (checkpoints, metrics)")
@click.option("--backbone", type=click.Choice(["mobilenet", "resnet50"]), default="mobilenet")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), default=None,
              help="local backbone state dict (nothing is downloaded)")
@click.option("--epochs", type=click.IntRange(1), default=10)
@click.option("--batch-size", type=click.IntRange(1), default=16, help="per process")
@click.option("--image-size", type=click.IntRange(32), default=256, help="training crop size (pixels)")
@click.option("--lr", type=float, default=None, help="peak learning rate [default: 0.01 sgd, 0.001 adamw]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd")
@click.option("--weight-decay", type=float, default=5e-4)
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default="cosine",
              help="after warm-up: cosine to 1%, or x0.1 at 60% and 85% of the run")
@click.option("--warmup-steps", type=click.IntRange(0), default=None, help="[default: 5% of the run, max 1000]")
@click.option("--workers", type=click.IntRange(0), default=2, help="data loader processes")
@click.option("--device", default="auto", help="auto | cpu | cuda")
@click.option("--amp", is_flag=True, help="mixed precision on CUDA (bf16 if supported, else fp16 + GradScaler)")
@click.option("--resume", is_flag=True, help="continue from OUT/last.pt (same settings required)")
@click.option("--seed", type=int, default=0)
@click.option("--max-steps", type=click.IntRange(1), default=None, help="stop after this many optimizer steps")
@click.option("--save-every", type=click.IntRange(0), default=0, help="also write last.pt every N steps")
@click.option("--flip-prob", type=click.FloatRange(0, 1), default=0.5)
@click.option("--rotate-prob", type=click.FloatRange(0, 1), default=0.0, help="online in-plane rotation probability")
@click.option("--rotate-max", type=click.FloatRange(0, 180), default=0.0, help="max in-plane rotation (degrees)")
@click.option("--crop-scales", type=(float, float), default=(0.3, 1.0), help="square crop side / short side")
@click.option("--no-color", is_flag=True, help="disable photometric distortion")
@click.option("--epoch-size", type=click.IntRange(1), default=None, help="images per epoch [default: all]")
@click.option("--val-size", type=click.IntRange(32), default=None,
              help="letterbox size for validation and inference [default: --image-size]")
@click.option("--val-every", type=click.IntRange(1), default=1, help="validate every N epochs (and after the last)")
@click.option("--w-pose", type=click.FloatRange(0), default=None,
              help="weight of the geodesic pose term (radians) in the loss [default: the detector's, 1]")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.998,
              help="decay of the weight moving average kept for validation and inference (0: off)")
@click.option("--no-sync-bn", is_flag=True, help="under DDP, per-process BatchNorm statistics")
@click.option("--grad-clip", type=float, default=None, help="clip the gradient norm")
@click.option("--no-progress", is_flag=True)
def main(manifest, val_manifest, out, backbone, pretrained, epochs, batch_size, image_size, lr, optimizer,
         weight_decay, schedule, warmup_steps, workers, device, amp, resume, seed, max_steps, save_every,
         flip_prob, rotate_prob, rotate_max, crop_scales, no_color, epoch_size, val_size, val_every, w_pose,
         ema, no_sync_bn, grad_clip, no_progress):
    """Train RetinaPose (RetinaFace + 6D pose head) on whole images; writes OUT/last.pt, best.pt, metrics.csv."""
    from pathlib import Path

    import manifests
    from hpe_model import checkpoint
    from hpe_model.data import parse_manifest_arg
    from hpe_model.train import TrainConfig, train

    for m in manifest:
        try:
            path, _ = parse_manifest_arg(m)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--manifest") from None
        if not Path(path).exists():
            raise click.BadParameter(f"{path}: no such manifest", param_hint="--manifest")
    cfg = TrainConfig(
        manifests=list(manifest), out=out, val_manifest=val_manifest, backbone=backbone, pretrained=pretrained,
        epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr, optimizer=optimizer,
        weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps, workers=workers, device=device,
        amp=amp, seed=seed, max_steps=max_steps, resume=resume, save_every=save_every, flip_prob=flip_prob,
        rotate_prob=rotate_prob, rotate_max=rotate_max, crop_scales=tuple(crop_scales), color=not no_color,
        epoch_size=epoch_size, val_size=val_size, val_every=val_every, w_pose=w_pose, ema=ema, sync_bn=not no_sync_bn,
        grad_clip=grad_clip, progress=not no_progress)
    try:
        res = train(cfg)
    except (manifests.ManifestError, checkpoint.CheckpointError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    rows = [r for r in res["history"] if "val_score" in r]
    msg = f"done: {res['step']} steps, {res['epoch']} epochs"
    if rows:
        r = min(rows, key=lambda r: r["val_score"])
        msg += (f"; best.pt = epoch {r['epoch']}: val MAE {r['val_mae']:.2f} deg, "
                f"{100 * r['val_detected']:.1f}% of faces detected")
    click.echo(msg, err=True)
    click.echo(str(Path(out) / "last.pt"))


if __name__ == "__main__":
    main()
