"""`hpe-data merge` and `hpe-data validate`."""
from __future__ import annotations

import click

import manifests


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(), help="Merged manifest (.parquet).")
def merge(sources, out):
    """Merge manifests or part folders (X.parquet.parts/) into one manifest sorted by sample_id.

    A sharded run merged this way is identical to the unsharded run.
    """
    path = manifests.merge(sources, out)
    click.echo(f"{manifests.read(path).num_rows} row(s) -> {path}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def validate(paths):
    """Check manifests against schema v1 (exit 1 on the first bad one, naming the column)."""
    for p in paths:
        try:
            t = manifests.read(p)
        except manifests.ManifestError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"{p}: ok, {t.num_rows} row(s), {t.num_columns} column(s)")
