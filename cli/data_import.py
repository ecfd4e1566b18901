"""`hpe-data import`: a raw dataset folder -> a manifest v1 (one row per face)."""
from __future__ import annotations

import click

DATASETS = ("300w-lp", "aflw2000", "biwi", "images")


@click.command("import")
@click.option("--dataset", required=True, type=click.Choice(DATASETS), help="Format of the folder.")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="Dataset folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest to write (.parquet).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
@click.option("--shard", default=None, metavar="I/N", help="Import the I-th of N shards into OUT.parts/.")
@click.option("--strict", is_flag=True, help="Exit non-zero when any input was bad (good rows are still written).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of per-face randomness.")
@click.option("--landmarks", default="auto", show_default=True,
              type=click.Choice(["auto", "projected", "face-alignment", "dlib"]),
              help="images: back-end (auto = face-alignment if its weights are present, else dlib); "
                   "biwi: projected head template (auto) or face-alignment.")
@click.option("--depth-to-rgb", default="R*p+T", show_default=True, type=click.Choice(["R*p+T", "R^T*(p-T)"]),
              help="biwi: direction of rgb.cal's R, T (undocumented upstream; recorded per row).")
@click.option("--head-size", default=200.0, show_default=True, type=click.FloatRange(min=1.0),
              help="biwi: nominal head size (mm) of the box around the projected head centre.")
@click.option("--biwi-box", default="landmarks", show_default=True, type=click.Choice(["head", "landmarks"]),
              help="biwi: box of the projected landmarks (the box definition of 300W-LP/AFLW2000 rows, which "
                   "the detector trains on and evaluation matches against), or a square of --head-size around "
                   "the projected head centre.")
@click.option("--full-decode", is_flag=True,
              help="Decode every image (slower) instead of reading sizes from headers and checking end markers.")
def import_cmd(dataset, root, out, workers, shard, strict, seed, landmarks, depth_to_rgb, head_size, biwi_box,
               full_decode):
    """Import 300W-LP, AFLW2000, BIWI or a folder of plain images into a manifest.

    Bad inputs are listed with their path and reason in OUT.errors.csv and skipped.
    """
    from hpe_data.importers import import_dataset
    from hpe_data.runner import StageError, parse_shard
    from manifests import ManifestError

    try:
        shard_t = parse_shard(shard)
        result = import_dataset(dataset, root, out, workers=workers, shard=shard_t, seed=seed,
                                landmarks=landmarks, depth_to_rgb=depth_to_rgb, head_size_mm=head_size,
                                biwi_box=biwi_box, full_decode=full_decode)
    except (StageError, ManifestError) as e:  # no row could be written / rows that break schema v1
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # unusable settings: bad shard, back-end without weights, ...
        raise click.UsageError(str(e)) from None
    click.echo(result.summary())
    if strict and result.errors:
        raise click.ClickException(f"--strict: {len(result.errors)} bad input(s), see {result.error_report}")
