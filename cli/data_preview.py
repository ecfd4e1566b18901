"""`hpe-data preview`: a contact sheet of faces with landmarks, boxes and pose axes."""
from __future__ import annotations

import click

import manifests
from hpe_data import preview as lib


@click.command()
@click.option("--manifest", "manifest", required=True, type=click.Path(exists=True), help="Manifest to show.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Sheet image (.jpg or .png).")
@click.option("--n", default=16, show_default=True, type=click.IntRange(1), help="Faces on the sheet.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --sort random.")
@click.option("--sort", default="yaw", show_default=True, type=click.Choice(["yaw", "random"]),
              help="yaw: evenly spaced along the yaw order (extremes included); random: a seeded sample.")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(32), help="Tile size in pixels.")
def preview(manifest, out, n, seed, sort, tile):
    """Grid of face crops with box, landmarks (occluded: magenta, not visible: hollow) and pose axes drawn
    from the stored rotation matrix (x red, y green, face direction blue), captioned with yaw/pitch/roll.

    The blue axis must point where the nose points; +yaw means the nose points to image-left.
    """
    try:
        sheet = lib.contact_sheet(manifest, out, n=n, seed=seed, sort=sort, tile=tile)
    except (manifests.ManifestError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    w, h = sheet.size
    click.echo(f"{len(sheet.rows)} face(s), {sheet.grid[0]}x{sheet.grid[1]} grid, {w}x{h} px -> {sheet.path}")
    for path, reason in sheet.problems:
        click.echo(f"problem: {reason}", err=True)
