"""`hpe-data stats`: pose histograms and a summary table of a manifest."""
from __future__ import annotations

import click

import manifests
from hpe_data import stats as lib


@click.command()
@click.option("--manifest", "manifest", required=True, type=click.Path(exists=True), help="Manifest to describe.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for PNGs, markdown and JSON.")
@click.option("--compare", default=None, type=click.Path(exists=True),
              help="A second manifest whose histograms are overlaid on the first's.")
def stats(manifest, out, compare):
    """Yaw/pitch/roll histograms (PNG), a yaw-pitch density plot and a per-dataset summary table.

    With --compare, one figure overlays both manifests: after a correct in-plane rotation yaw and pitch
    histograms change, after a roll-only rotation they stay identical.
    """
    try:
        res = lib.write_stats(manifest, out, compare)
    except manifests.ManifestError as e:
        raise click.ClickException(str(e)) from None
    click.echo(res["markdown"])
    for f in res["files"]:
        click.echo(f"wrote {f}")
