"""`hpe-data synth`: render a synthetic dataset in the 300W-LP, AFLW2000 or BIWI on-disk format."""
from __future__ import annotations

from pathlib import Path

import click

from hpe_data import synth as _synth


@click.command("synth")
@click.option("--format", "fmt", type=click.Choice(_synth.FORMATS), required=True, help="on-disk layout to write")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="output folder")
@click.option("--count", type=click.IntRange(min=0), required=True,
              help="samples to render (300w-lp also writes a _Flip twin of each)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="processes; the output bytes do not depend on it")
def synth(fmt: str, out: Path, count: int, seed: int, workers: int) -> None:
    """Render COUNT synthetic heads with exact pose and 68-landmark labels into OUT (plus OUT/truth.json)."""
    records = _synth.synth(fmt, out, count, seed=seed, workers=workers)
    images = len({r["image"] for r in records})
    click.echo(f"synth {fmt}: {images} images, {len(records)} faces, seed {seed} -> {out} (truth.json)")
