"""The `rotate` and `flip` stages: pose-consistent in-plane rotations and mirror images of a manifest.

One work item is one image with all its faces (`runner.group_by_image`): the image is decoded once, warped once
per copy and encoded once per output image; every face's labels follow through `transforms.rotate_row` /
`transforms.flip_row` (conventions §2), so the label work is small beside the warp.

Output images (always JPEG) go under `images_dir`, named after the input's `image_path` with a tag before the
suffix (`AFW/x.jpg` -> `AFW/x@rot0.jpg`, `AFW/x@flip.jpg`); a soft mask (`mask_path`) is transformed too
(border 0) and written beside its image (`AFW/x@rot0.<mask stem>.png`). The same input gives the same files
whatever the worker count, shard or run. Columns a stage does not change (`mask`, `occluded`, `split`, ...)
are kept, so the stages compose with `build-masked` in either order.

Images are handled in OpenCV's BGR order end to end (decode, warp, encode): the stages only move pixels, so
the two colour conversions of `imageio.read_rgb`/`encode` (about 10 % of the floor) are not paid. The warp
writes into one reused array per image size (a fresh 450x450 output costs an allocation and its page faults,
~0.15 ms), and JPEGs go to disk straight from the encoder's buffer, their folder made once per process.
"""
from __future__ import annotations

import os
import threading

import cv2
import numpy as np

import manifests

from . import imageio, runner, transforms
from .runner import Item, StageError

BORDERS = tuple(transforms.BORDERS)
CHUNK_SIZE = 64  # images per runner chunk: ~0.2 s of work, so the per-chunk Parquet round trip stays ~1 %


def parse_angles(text: str | None) -> list[float] | None:
    """'--angles' value ('-45,0,30') -> list of degrees; None when not given."""
    if text is None or not str(text).strip():
        return None
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--angles expects a comma list of degrees, e.g. -45,30, got {text!r}") from None


# ---------------------------------------------------------------- paths and image files


def _bases(manifest, out, images_dir) -> dict:
    """Absolute folders every item needs, computed once per run (workers inherit them)."""
    return dict(src_base=os.path.abspath(manifests.base_dir(manifest)),
                out_base=os.path.abspath(manifests.base_dir(out)), root=os.path.abspath(images_dir))


def _source(ctx: runner.Context, image_path: str) -> str:
    """Absolute path of an input image or mask (stored relative to the input manifest's folder)."""
    return os.path.normpath(os.path.join(ctx.options["src_base"], image_path))


def derived_path(ctx: runner.Context, image_path: str, tag: str, suffix: str) -> str:
    """Deterministic output name below `images_dir`: the input's path there, `@tag` before the new suffix.

    An input already below `images_dir` (a rotated image being flipped) keeps its place there; a relative input
    keeps its relative path; an absolute one or one with '..' goes to `<folder name>-<hash of folder>/`.
    """
    root, src = ctx.options["root"], _source(ctx, image_path)
    if src.startswith(root + os.sep):
        rel = src[len(root) + 1:]
    elif not os.path.isabs(image_path) and ".." not in _parts(image_path):
        rel = os.path.normpath(image_path)
    else:
        folder = os.path.dirname(src)
        rel = os.path.join(f"{os.path.basename(folder)}-{runner.stable_hash(folder):08x}", os.path.basename(src))
    return os.path.join(root, f"{os.path.splitext(rel)[0]}@{tag}{suffix}")


def _parts(path: str) -> list[str]:
    """The components of a path as PurePath splits them (only '..' matters here), without building one."""
    return path.replace(os.altsep, os.sep).split(os.sep) if os.altsep else path.split(os.sep)


def _stored(ctx: runner.Context, path: str, original: str | None = None) -> str:
    """Path to store in the output manifest: relative to its base folder (absolute inputs stay absolute)."""
    if original is not None and os.path.isabs(original):
        return original
    return os.path.relpath(path, ctx.options["out_base"])


def _read_image(ctx: runner.Context, item: Item) -> np.ndarray:
    """The decoded image (BGR); on failure, `imageio.read_rgb` names the reason."""
    path = _source(ctx, item.key)
    # imdecode, not imread: imread returns a cut-off JPEG as a partly grey image, imdecode rejects it.
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) if os.path.isfile(path) else None
    if img is None:
        try:
            imageio.read_rgb(path)  # raises with the reason (missing, empty, truncated)
        except imageio.ImageError as e:
            raise StageError(path, str(e).removeprefix(f"{path}: ")) from None
        raise StageError(path, "unreadable image")
    H, W = img.shape[:2]
    for r in item.payload:
        if (int(r["width"]), int(r["height"])) != (W, H):
            raise StageError(path, f"image is {W}x{H} but face {r['sample_id']} says {r['width']}x{r['height']}")
    return img


def _write_jpeg(path: str, bgr: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise StageError(path, "JPEG encoding failed")
    _write_atomic(path, buf)


_MADE: set[str] = set()  # output folders this process has made (or found): one makedirs per folder, not per file


def _write_atomic(path: str, data) -> None:
    """`imageio.write_atomic` (temp `.NAME.tmp-PID` + rename) for the hot path: the folder is made once per
    process, and the encoder's buffer is written as it is (no copy to bytes)."""
    folder, name = os.path.split(path)
    if folder not in _MADE:
        os.makedirs(folder, exist_ok=True)
        _MADE.add(folder)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:  # the folder was removed since this process made it
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += os.write(fd, view[done:])
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


_LOCAL = threading.local()


def _warp_buffer(img: np.ndarray) -> np.ndarray:
    """An output array for the warp, reused (per thread) while images keep one size: each warped copy is
    encoded before the next warp."""
    key = (img.shape, img.dtype.str)
    buf = getattr(_LOCAL, "buffers", {}).get(key)
    if buf is None:
        buf = np.empty_like(img)
        _LOCAL.buffers = {key: buf}
    return buf


def _read_masks(ctx: runner.Context, rows: list[dict]) -> dict[str, np.ndarray]:
    """The soft-mask PNGs (one channel, 0-255) referenced by the faces of an image, each read once."""
    masks = {}
    for r in rows:
        mp = r.get("mask_path")
        if mp and mp not in masks:
            path = _source(ctx, mp)
            m = cv2.imread(path, cv2.IMREAD_UNCHANGED) if os.path.isfile(path) else None
            if m is None:
                raise StageError(path, "mask PNG missing or unreadable")
            if m.ndim == 3:  # an RGBA/RGB mask: keep its last channel (alpha or grey)
                m = m[..., -1]
            if m.shape[:2] != (int(r["height"]), int(r["width"])):
                raise StageError(path, f"mask is {m.shape[1]}x{m.shape[0]}, image is {r['width']}x{r['height']}")
            masks[mp] = m
    return masks


def _write_masks(ctx, masks: dict, image_dst: str, fn) -> dict[str, str]:
    """Transform each mask with `fn` and write it beside the output image as `<image stem>.<mask stem>.png`
    (a hash is added when two masks of one image share a stem); returns old mask_path -> new one."""
    new, stem = {}, os.path.splitext(image_dst)[0]
    stems = [os.path.splitext(os.path.basename(mp))[0] for mp in masks]
    for (mp, m), ms in zip(masks.items(), stems):
        if stems.count(ms) > 1:
            ms = f"{ms}-{runner.stable_hash(mp):08x}"
        dst = f"{stem}.{ms}.png"
        imageio.write_atomic(dst, imageio.encode(fn(m), ".png"))
        new[mp] = _stored(ctx, dst)
    return new


def _originals(ctx: runner.Context, rows: list[dict]) -> list[dict]:
    """The untouched input rows, with paths re-based on the output manifest's folder."""
    out = []
    for r in rows:
        r = dict(r)
        r["image_path"] = _stored(ctx, _source(ctx, r["image_path"]), r["image_path"])
        if r.get("mask_path"):
            r["mask_path"] = _stored(ctx, _source(ctx, r["mask_path"]), r["mask_path"])
        out.append(r)
    return out


# ---------------------------------------------------------------- rotate


def copy_angles(ctx: runner.Context, key: str) -> list[float]:
    """Angles (degrees, counter-clockwise) of the copies of one image: the --angles list, or one uniform draw
    in [-range, range] per copy from the image's own generator (independent of workers and shards)."""
    o = ctx.options
    if o.get("angles") is not None:
        return list(o["angles"])
    rng_ = float(o["range"])
    return [float(ctx.rng(key, k).uniform(-rng_, rng_)) for k in range(int(o["copies"]))]


def rotate_item(item: Item, ctx: runner.Context) -> list[dict]:
    """Stage function: all copies of one image and its faces."""
    o = ctx.options
    img = _read_image(ctx, item)
    H, W = img.shape[:2]
    rows = item.payload
    center = transforms.rotation_center(rows)
    masks = _read_masks(ctx, rows)
    out = _originals(ctx, rows) if o.get("include_original") else []
    for k, theta in enumerate(copy_angles(ctx, item.key)):
        tag = f"rot{k}"
        dst = derived_path(ctx, item.key, tag, ".jpg")
        labelled = []
        for r in rows:
            try:
                r2 = transforms.rotate_row(r, theta, center)
            except ValueError as e:  # e.g. two perspective cameras in one image
                ctx.report(r["sample_id"], str(e))
                continue
            if not np.isfinite(r2["bbox"]).all():
                ctx.report(r["sample_id"], f"face leaves the frame when rotated by {theta:.2f} deg; dropped")
                continue
            valid = transforms.valid_fraction(r2["bbox"], theta, center, W, H)
            if r.get("valid_fraction") is not None:  # already rotated: an estimate, the border shares compound
                valid *= float(r["valid_fraction"])
            r2.update(
                sample_id=f"{r['sample_id']}@{tag}",
                parent_id=r["sample_id"],
                augment=transforms.append_augment(r, "rotate", theta=theta, center=list(center), border=o["border"]),
                image_path=_stored(ctx, dst),
                valid_fraction=valid,
            )
            labelled.append(r2)
        if not labelled:
            continue
        _write_jpeg(dst, transforms.rotate_image(img, theta, center, o["border"], dst=_warp_buffer(img)), o["quality"])
        new_masks = _write_masks(ctx, masks, dst, lambda m: transforms.rotate_image(m, theta, center, "constant"))
        for r2 in labelled:
            if r2.get("mask_path"):
                r2["mask_path"] = new_masks[r2["mask_path"]]
        out.extend(labelled)
    return out


def rotate(manifest, out, images_dir, *, range_deg: float = 45.0, copies: int = 1, angles=None, seed: int = 0,
           border: str = "reflect101", include_original: bool = False, workers: int = 1, shard=None,
           strict: bool = False, quality: int = imageio.JPEG_QUALITY, resume: bool = True,
           chunk_size: int = CHUNK_SIZE) -> runner.Result:
    """Rotate every image of `manifest` `copies` times (or once per entry of `angles`) and write `out`.

    Angles are counter-clockwise on screen, uniform in [-range_deg, range_deg] per (image, copy) unless given.
    Rows: `sample_id = parent@rot<k>`, `parent_id`, `augment` (+ {"op": "rotate", "theta", "center",
    "border"}), `rotate_deg`, `valid_fraction`, labels from `transforms.rotate_row`.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if angles is not None:
        angles = [float(a) for a in angles]
        if not angles:
            raise ValueError("angles: empty list")
    elif copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if range_deg < 0:
        raise ValueError(f"range must be >= 0 degrees, got {range_deg}")
    opts = dict(_bases(manifest, out, images_dir), range=float(range_deg), copies=int(copies), angles=angles,
                border=border, include_original=bool(include_original), quality=int(quality))
    items = runner.group_by_image(manifests.read(manifest))
    return runner.run(rotate_item, items, out, seed=seed, workers=workers, shard=shard, options=opts,
                      desc="rotate", resume=resume, strict=strict, chunk_size=chunk_size, write_dirs=[images_dir])


# ---------------------------------------------------------------- flip


def flip_item(item: Item, ctx: runner.Context) -> list[dict]:
    """Stage function: the mirrored image and its faces."""
    o = ctx.options
    img = _read_image(ctx, item)
    rows = item.payload
    masks = _read_masks(ctx, rows)
    out = _originals(ctx, rows) if o.get("include_original") else []
    dst = derived_path(ctx, item.key, "flip", ".jpg")
    _write_jpeg(dst, transforms.flip_image(img), o["quality"])
    new_masks = _write_masks(ctx, masks, dst, transforms.flip_image)
    for r in rows:
        r2 = transforms.flip_row(r)
        r2.update(sample_id=f"{r['sample_id']}@flip", parent_id=r["sample_id"],
                  augment=transforms.append_augment(r, "flip"), image_path=_stored(ctx, dst))
        if r2.get("mask_path"):
            r2["mask_path"] = new_masks[r2["mask_path"]]
        out.append(r2)
    return out


def flip(manifest, out, images_dir, *, include_original: bool = False, workers: int = 1, shard=None,
         strict: bool = False, quality: int = imageio.JPEG_QUALITY, resume: bool = True,
         chunk_size: int = CHUNK_SIZE) -> runner.Result:
    """Mirror every image of `manifest` horizontally and write `out` (`sample_id = parent@flip`)."""
    opts = dict(_bases(manifest, out, images_dir), include_original=bool(include_original), quality=int(quality))
    items = runner.group_by_image(manifests.read(manifest))
    return runner.run(flip_item, items, out, workers=workers, shard=shard, options=opts, desc="flip",
                      resume=resume, strict=strict, chunk_size=chunk_size, write_dirs=[images_dir])
