"""`hpe-data build-masked`: pose-aware synthetic face masks with per-landmark occlusion labels."""
from __future__ import annotations

import click

from hpe_data import runner


@click.command()
@click.option("--manifest", "manifest", required=True, type=click.Path(exists=True), help="Input manifest.")
@click.option("--out", required=True, type=click.Path(), help="Output manifest (.parquet).")
@click.option("--images-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the masked images (<input path>@mask<k>.jpg).")
@click.option("--styles", default=None,
              help="Comma list of mask kinds (surgical, n95, kn95, cloth) or kind/pattern (e.g. cloth/dots); "
                   "default: all kinds.")
@click.option("--coverage", default="normal", show_default=True,
              help="Mode names drawn uniformly per face (normal, below-nose, chin) or LO:HI, the height of the "
                   "mask's top edge on the face's vertical axis: 0 = chin (landmark 8), 1 = nose root (27); "
                   "the bridge points 29/28 sit near 0.8/0.9. Numeric values are named by what they cover.")
@click.option("--style-set", type=click.Choice(["all", "train", "heldout"]), default="all", show_default=True,
              help="Fixed split of the mask styles: train draws only train styles, heldout only held-out ones "
                   "(patterns cloth/camo, cloth/checks, n95/valve; colours teal, lavender, burgundy, olive, "
                   "mustard, purple, beige), all draws from both.")
@click.option("--per-face", default=1, show_default=True, type=click.IntRange(1),
              help="Masked variants of each image (k = 0..K-1), each with its own styles.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
@click.option("--include-original", is_flag=True, help="Also emit the untouched input rows.")
@click.option("--write-mask-png", is_flag=True,
              help="Write each face's soft mask (0-255 alpha PNG, image size) and fill `mask_path`.")
@click.option("--shard", default=None, help="I/N: process every N-th image from the I-th (0-based).")
@click.option("--strict", is_flag=True, help="Exit non-zero when any face could not be masked.")
def build_masked(manifest, out, images_dir, styles, coverage, style_set, per_face, seed, workers,
                 include_original, write_mask_png, shard, strict):
    """Draw a synthetic mask on every face of the manifest, at any pose, from the rows' own 3D landmarks.

    No face detector: the mask surface is built from `landmarks_3d` (or a 3D template fitted to the 2D
    landmarks) and `rotation`, rendered with a depth test against the face, lit and blurred like the photo.
    Pose, landmarks and boxes are unchanged; new columns: mask, mask_coverage, occluded (68 flags: landmark
    visible on the face and hidden by the mask), parent_id/augment lineage, optional mask_path. Faces that
    cannot be masked are listed with their reason in OUT.errors.csv.

    \b
    Masked evaluation protocol (comparable numbers, styles never seen in training):
      train:  hpe-data build-masked --manifest train.parquet ... --style-set train
      test:   hpe-data build-masked --manifest aflw2000.parquet ... --style-set heldout \\
                --coverage normal,below-nose,chin --seed 0
    Every draw depends only on (seed, sample_id, variant), so the same command gives the same images and
    rows (style, coverage, occluded, lineage) on any machine, worker count or shard.
    """
    from hpe_data.masks import build_masked as build

    try:
        result = build(manifest, out, images_dir, styles=styles, coverage=coverage, style_set=style_set,
                       per_face=per_face, seed=seed, workers=workers, include_original=include_original,
                       write_mask_png=write_mask_png, shard=runner.parse_shard(shard), strict=strict)
    except (ValueError, runner.StageError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.summary())
