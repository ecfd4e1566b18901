"""`hpe-eval`: full-frame, detection-free evaluation of a checkpoint on manifests.

`hpe-eval --checkpoint C --manifest M --out DIR` is the same as `hpe-eval run ...`.
"""
from __future__ import annotations

import click

from .lazy import LazyGroup

COMMANDS = {
    "predict": "cli.eval_predict:predict",
    "export": "cli.eval_export:export",
}

_OPTIONS = [
    click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="Model checkpoint."),
    click.option("--manifest", "manifest", multiple=True, type=click.Path(exists=True),
                 help="Test manifest (repeatable; faces are pooled, with a breakdown per dataset)."),
    click.option("--out", type=click.Path(file_okay=False), help="Report folder."),
    click.option("--image-size", type=click.IntRange(min=32), default=None,
                 help="Scale each full image so its long side is this many pixels (aspect kept, no crop). "
                      "Default: native size."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
    click.option("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when available)."),
    click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="Detections below this score are ignored."),
    click.option("--iou-thresh", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
                 help="A detection matches a face at IoU >= this."),
    click.option("--protocol", type=click.Choice(["none", "aflw2000", "biwi"]), default="none", show_default=True,
                 help="aflw2000: keep faces with all |angles| <= 99; biwi: all frames (protocol 2 = run on "
                      "the test manifest of `hpe-data split --by subject`)."),
    click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                 help="Image decoding threads."),
    click.option("--worst-k", type=click.IntRange(min=0), default=16, show_default=True,
                 help="Faces on the worst-case contact sheet."),
]


def run_options(f):
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_eval(checkpoint, manifest, out, image_size, batch_size, device, score_thresh, iou_thresh, protocol,
             workers, worst_k):
    missing = [n for n, v in (("--checkpoint", checkpoint), ("--manifest", manifest), ("--out", out)) if not v]
    if missing:
        raise click.UsageError(f"missing option(s): {', '.join(missing)}")
    import hpe_model
    import manifests
    from hpe_model.evaluation import EvaluationError, evaluate

    load = getattr(hpe_model, "load", None)
    if load is None:
        raise click.ClickException("hpe_model.load(checkpoint, device=...) is not available in this install")
    device = device or _default_device()
    # keep low-scoring detections in the predictor: --score-thresh decides in the matcher, and they are counted
    predictor = load(checkpoint, device=device, score_thresh=min(score_thresh, 0.02))
    try:
        rep = evaluate(predictor, list(manifest), out, batch_size=batch_size, image_size=image_size,
                 score_thresh=score_thresh, iou_thresh=iou_thresh, protocol=protocol, workers=workers,
                 worst_k=worst_k, echo=click.echo, meta={"checkpoint": str(checkpoint), "device": device})
    except (EvaluationError, manifests.ManifestError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report -> {out}/report.json")
    if not rep["n_faces"]:
        raise click.ClickException(f"no face could be evaluated (see {out}/errors.csv)")


@click.group(cls=LazyGroup, lazy=COMMANDS, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpe-toolkit")
@run_options
@click.pass_context
def main(ctx, **opts):
    """Evaluate the detection-free head-pose network on full images (no face crop).

    With options and no sub-command, runs `run`.
    """
    if ctx.invoked_subcommand is not None:
        given = [k for k in ("checkpoint", "manifest", "out") if opts.get(k)]
        if given:
            raise click.UsageError(f"put the run options after the sub-command "
                                   f"{ctx.invoked_subcommand!r} (got {', '.join(given)} before it)")
        return
    if not any(opts.get(k) for k in ("checkpoint", "manifest", "out")):
        click.echo(ctx.get_help())
        return
    run_eval(**opts)


@main.command("run")
@run_options
def run(**opts):
    """Match detections to faces by IoU, score pose under a protocol, write report.json, faces.parquet,
    plots, worst-case sheets and summary.md into --out."""
    run_eval(**opts)


if __name__ == "__main__":
    main()
