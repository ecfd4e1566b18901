"""`hpe-data split`: seeded train/test manifests that keep a person (or sequence, or image) on one side."""
from __future__ import annotations

import click


@click.command()
@click.option("--manifest", required=True, type=click.Path(exists=True), help="Manifest (.parquet or part folder).")
@click.option("--by", type=click.Choice(["subject", "sequence", "image"]), default="subject", show_default=True,
              help="Group kept on one side. 'sequence' can leak BIWI people recorded twice; 'image' keeps "
                   "rotated/flipped copies with their original.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3,
              show_default=True, help="Share of rows wanted on the test side (whole groups move together).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for train.parquet, "
              "test.parquet and split.json.")
def split(manifest, by, seed, test_fraction, out):
    """Split a manifest into train/test by subject, sequence or image, reproducibly from --seed."""
    import manifests
    from hpe_data.split import SplitError, split_manifest

    try:
        info = split_manifest(manifest, out, by=by, test_fraction=test_fraction, seed=seed)
    except (SplitError, manifests.ManifestError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"split by {by}, seed {seed}: {info['rows']['train']} train / {info['rows']['test']} test row(s) "
               f"(test {100 * info['test_fraction_rows']:.1f} %, {len(info['groups']['test'])} of "
               f"{len(info['groups']['train']) + len(info['groups']['test'])} group(s)) -> {out}")
    if info["subjects_on_both_sides"]:
        click.echo(f"warning: subject(s) on both sides: {', '.join(info['subjects_on_both_sides'])}", err=True)
