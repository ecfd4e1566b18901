"""`hpe-data rotate` and `hpe-data flip`: pose-consistent in-plane rotations and mirror images."""
from __future__ import annotations

import click

from hpe_data import rotate as stage
from hpe_data import runner

_common = [
    click.option("--manifest", "manifest", required=True, type=click.Path(exists=True), help="Input manifest."),
    click.option("--out", required=True, type=click.Path(), help="Output manifest (.parquet)."),
    click.option("--images-dir", required=True, type=click.Path(file_okay=False),
                 help="Folder for the new images (names follow the input image paths)."),
    click.option("--include-original", is_flag=True, help="Also emit the untouched input rows."),
    click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes."),
    click.option("--shard", default=None, help="I/N: process every N-th image from the I-th (0-based)."),
    click.option("--strict", is_flag=True, help="Exit non-zero when any input was bad."),
]


def common(fn):
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


def _run(call):
    try:
        result = call()
    except (ValueError, runner.StageError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.summary())


@click.command()
@common
@click.option("--range", "range_deg", default=45.0, show_default=True, type=click.FloatRange(0),
              help="Angles are drawn uniformly in [-range, range] degrees.")
@click.option("--copies", default=1, show_default=True, type=click.IntRange(1), help="Rotated copies per image.")
@click.option("--angles", default=None, help="Comma list of fixed angles (one copy each), e.g. -45,30.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--border", default="reflect101", show_default=True, type=click.Choice(stage.BORDERS),
              help="Fill outside the source image (masks always use constant 0).")
def rotate(manifest, out, images_dir, include_original, workers, shard, strict, range_deg, copies, angles, seed,
           border):
    """Rotate images in-plane (counter-clockwise on screen) with pose-consistent labels.

    The pose becomes Rz(-theta) @ R (all three angles change for a turned head, not only roll); landmarks
    follow the image warp and boxes are recomputed from them. Each image is rotated once with all its faces.
    """
    def call():
        ang = stage.parse_angles(angles)
        if ang is not None and copies not in (1, len(ang)):
            raise ValueError(f"--copies {copies} disagrees with the {len(ang)} --angles given")
        return stage.rotate(manifest, out, images_dir, range_deg=range_deg, copies=copies, angles=ang, seed=seed,
                            border=border, include_original=include_original, workers=workers,
                            shard=runner.parse_shard(shard), strict=strict)

    _run(call)


@click.command()
@common
def flip(manifest, out, images_dir, include_original, workers, shard, strict):
    """Mirror images horizontally: x' = W - 1 - x, landmarks re-indexed, yaw and roll negated."""
    _run(lambda: stage.flip(manifest, out, images_dir, include_original=include_original, workers=workers,
                            shard=runner.parse_shard(shard), strict=strict))
