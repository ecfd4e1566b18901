"""`build-masked`: every face of every image gets a pose-aware synthetic mask, with occlusion labels.

Per image item (all its faces together, `runner.group_by_image`) and per variant k < per_face: each face
draws its style from `ctx.rng(sample_id, k)`, its mask is built from the row's own landmarks_3d (or the 3D
template fitted to its 2D landmarks) and rotation, rasterised with the face proxy in one z-buffer, lit from
the face and blended; all faces of the image go into one output image `<stem>@mask<k>.jpg`.

Output rows are the input rows with pose, landmarks and box untouched, plus: sample_id `<parent>@mask<k>`,
parent_id, augment (+ {"op": "mask", ...}), image_path, mask (style name), mask_coverage, occluded and,
with write_mask_png, mask_path.

`occluded[i]` is True when landmark i is visible on the face (not hidden by the face itself, judged on the
face proxy, and not marked invisible by the row's `landmark_visible`) and the mask covers it: mask alpha
> 0.5 at its pixel and the mask in front of it there. Self-occlusion stays apart: a far-side jaw point at
large yaw is hidden by the face and is not flagged; `landmark_visible` is left as it was.

A face that cannot be masked (no usable landmarks, landmarks that contradict the rotation, a mask mostly
outside the image, ...) is reported with its reason; in a multi-face image it stays in the output image
unmasked, with its row (mask null), so that no face of the image is left without a label.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from numba import njit

import manifests

from .. import imageio
from ..runner import Context, Item, StageError, group_by_image, run, stable_hash
from ..transforms import append_augment
from . import composite as C
from . import geometry as G
from .styles import (PROFILES, Style, coverage_value, parse_coverage, parse_style_set, parse_styles, sample_style,
                     style_table)

SENTINELS = ((-1.0, 452.0), (-2.0, 451.0))  # AFLW unannotated point, 1-based and 0-based
MIN_INSIDE = 0.5  # a mask with less of its surface inside the image is reported, not drawn
MIN_SCALE_PX = 4.0
PROXY_DEPTH_BIAS = 0.1  # face-scale units


class Unmaskable(ValueError):
    """A face this stage cannot mask; the message is the reason reported."""


@dataclass
class FaceMask:
    style: Style
    coverage: float  # top-edge height, 0 = chin .. 1 = nose root
    mode: str  # normal | below-nose | chin
    alpha: np.ndarray  # (h, w) float32 in [0, 1] over window
    window: tuple  # x0, y0, x1, y1
    occluded: np.ndarray  # (68,) bool
    self_occluded: np.ndarray  # (68,) bool, by the face proxy

    def full_alpha(self, height: int, width: int) -> np.ndarray:
        a = np.zeros((height, width), np.float32)
        x0, y0, x1, y1 = self.window
        a[y0:y1, x0:x1] = self.alpha
        return a


# --------------------------------------------------------------------------------------------- one face


@njit(cache=True)
def _valid_2d(lm, width, height):
    """Usable 2D points: finite, within half an image of the frame, not an AFLW 'unannotated' sentinel."""
    ok = np.empty(lm.shape[0], np.bool_)
    for i in range(lm.shape[0]):
        x, y = lm[i, 0], lm[i, 1]
        ok[i] = np.isfinite(x) and np.isfinite(y) and -0.5 * width < x < 1.5 * width and \
            -0.5 * height < y < 1.5 * height
        for k in range(len(SENTINELS)):
            if x == SENTINELS[k][0] and y == SENTINELS[k][1]:
                ok[i] = False
    return ok


def face_landmarks_3d(row: dict, template: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(68, 3) landmarks_3d of a row and where they came from ('landmarks_3d' or 'template')."""
    W, H = int(row["width"]), int(row["height"])
    R = np.asarray(row["rotation"], dtype=np.float64).reshape(3, 3)
    l3 = row.get("landmarks_3d")
    if l3 is not None:
        l3 = np.asarray(l3, dtype=np.float64).reshape(68, 3)
        if _valid_2d(l3, W, H).all() and np.isfinite(l3[:, 2]).all():
            return l3, "landmarks_3d"
    lm = row.get("landmarks")
    if lm is None:
        raise Unmaskable("no usable landmarks_3d and no 2D landmarks")
    lm = np.asarray(lm, dtype=np.float64).reshape(68, 2)
    valid = _valid_2d(lm, W, H)
    if valid.sum() < 34:
        raise Unmaskable(f"only {int(valid.sum())} of 68 landmarks usable (NaN, sentinel or far outside)")
    if template is None:
        raise Unmaskable("row has no landmarks_3d and no 3D template is available (hpe_data.head.TEMPLATE_68)")
    try:
        return G.fit_template(lm, R, template, valid), "template"
    except ValueError as e:
        raise Unmaskable(str(e)) from None


def _check_shape(S: np.ndarray) -> None:
    """The de-rotated landmarks must look like a frontal face, else landmarks and rotation disagree."""
    width = S[16, 0] - S[0, 0]
    depth = 0.5 * (S[0, 2] + S[16, 2]) - S[30, 2]
    if not (width > 0 and depth > 0.1 * width and S[8, 1] > S[27, 1]):
        raise Unmaskable("landmarks do not match the rotation (the de-rotated face is not frontal: "
                         "mirrored, upside down or turned)")


_PROFILE_VECTORS = {kind: G.profile_vector(p) for kind, p in PROFILES.items()}


@njit(cache=True)
def _occlusion(L, lm, alpha, face_id, depth, x0, y0, gate, tol, selfocc, visible):
    """Landmarks the mask hides: at each landmark's pixel (its 2D annotation lm where finite, else its 3D
    point L on screen) the mask's alpha > 0.5, the mask won the z-buffer there and lies in front of the
    landmark (within tol px of depth: a mask following a convex chin or lips can pass a hair behind their
    vertices), the face itself does not hide it (selfocc) and it was visible (visible)."""
    h, w = face_id.shape
    out = np.zeros(L.shape[0], np.bool_)
    for i in range(L.shape[0]):
        x, y = lm[i, 0], lm[i, 1]
        if not (np.isfinite(x) and np.isfinite(y)):
            x, y = L[i, 0], L[i, 1]
        q, r = int(np.rint(x)) - x0, int(np.rint(y)) - y0
        if not (0 <= q < w and 0 <= r < h) or selfocc[i] or not visible[i]:
            continue
        f = face_id[r, q]
        out[i] = alpha[r, q] > 0.5 and 0 <= f < gate and depth[r, q] < L[i, 2] + tol
    return out


def mask_face(img: np.ndarray, row: dict, style: Style, rng: np.random.Generator,
              template: np.ndarray | None = None, loops: bool = True) -> FaceMask:
    """Draw one face's mask into img (H, W, 3) uint8 RGB, in place. Raises Unmaskable with the reason.

    template: (68, 3) head-frame 3D landmarks for a row without landmarks_3d (None: such a row is
    Unmaskable); loops: draw ear loops. Pixels the mask does not reach stay bit-identical.
    """
    H, W = img.shape[:2]
    R = row.get("rotation")
    R = None if R is None else np.asarray(R, dtype=np.float64).reshape(3, 3)
    if R is None or not np.isfinite(R).all():
        raise Unmaskable("no rotation")
    l3, _ = face_landmarks_3d(row, template)
    S, c, r = G.frame(l3, R)
    _check_shape(S)
    if r < MIN_SCALE_PX:
        raise Unmaskable(f"face too small to mask (scale {r:.1f} px)")
    heights = G.midline_heights(S)
    cov = coverage_value(style, heights)
    mode = style.coverage_mode or G.coverage_mode(S, cov)

    sc = G.mask_scene(S, R, c, _PROFILE_VECTORS[style.kind], cov, style.jitter, W, H, loops, PROXY_DEPTH_BIAS)
    if sc.inside < MIN_INSIDE:
        raise Unmaskable(f"mask mostly outside the image ({100 * sc.inside:.0f} % of it inside)")
    x0, y0 = max(int(math.floor(sc.box[0])) - 4, 0), max(int(math.floor(sc.box[1])) - 4, 0)
    x1, y1 = min(int(math.ceil(sc.box[2])) + 5, W), min(int(math.ceil(sc.box[3])) + 5, H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise Unmaskable("mask outside the image")
    window = (x0, y0, x1, y1)
    params = C.pack(style, r, sc.width / r, sc.height / r)
    drawn = C.composite(img, window, sc.verts, sc.faces, sc.attr, sc.n_body, sc.gate, sc.skin, params, r, rng)
    if drawn is None:
        raise Unmaskable("mask not visible (hidden behind the head)")
    alpha, face_id, depth = drawn

    # occlusion labels at the landmark pixels
    L = np.empty((68, 3))
    G._to_image(S, R, c, L, 0)
    selfocc = G._self_occluded(L, sc.proxy, 0.05 * r)
    lm = row.get("landmarks")
    lm = L[:, :2] if lm is None else np.asarray(lm, dtype=np.float64).reshape(68, 2)
    vis = row.get("landmark_visible")  # hidden already (by the face, a hand, the frame): not by the mask
    vis = _ALL_VISIBLE if vis is None else np.asarray(vis, dtype=np.bool_)
    occluded = _occlusion(L, lm, alpha, face_id, depth, x0, y0, sc.gate, PROXY_DEPTH_BIAS * r, selfocc, vis)
    return FaceMask(style, float(cov), mode, alpha, window, occluded, selfocc)


_ALL_VISIBLE = np.ones(68, np.bool_)


_WARM = []


def warm_up() -> None:
    """Load every compiled kernel of the stage once per process (numba caches them on disk; loading still
    takes a fraction of a second, and the first run in a fresh checkout compiles them): masks a small
    synthetic face of each kind. Runs when this module is imported (and build_masked makes sure of it
    before the runner forks its workers), so workers inherit the loaded code and no image pays for it."""
    if _WARM:
        return
    _WARM.append(True)
    T = _default_template()
    if T is None:  # nothing to warm up with: kernels load on first use
        return
    T = (T - T.mean(0)) * (30.0 / G.scale_of(T - T.mean(0)))  # a 30 px face in a 128 px image
    l3 = np.stack([T[:, 0] + 64.0, T[:, 1] + 64.0, -T[:, 2]], 1)
    row = dict(width=128, height=128, rotation=np.eye(3).reshape(-1), landmarks_3d=l3.reshape(-1),
               landmarks=l3[:, :2].reshape(-1))
    for kind in PROFILES:
        rng = np.random.default_rng(0)
        try:
            mask_face(np.full((128, 128, 3), 128, np.uint8), row, sample_style(rng, [(kind, None)]), rng)
        except Unmaskable:
            pass


# --------------------------------------------------------------------------------------------- the stage


def _template(ctx: Context):
    t = ctx.options.get("template")
    return _default_template() if t is None else np.asarray(t, dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _default_template():
    try:
        from ..head import TEMPLATE_68
    except ImportError:
        return None
    return np.asarray(TEMPLATE_68, dtype=np.float64)


def _warm_on_import():
    try:
        warm_up()
    except Exception as e:  # never break the import: the kernels would then load (or fail) on first use
        import warnings

        warnings.warn(f"hpe_data.masks: warm-up failed ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)


def output_name(image_path: str, k: int) -> str:
    """Relative path of variant k of an image inside --images-dir: the input's relative path (so that
    same-named files of different subsets stay apart), or a hashed folder for absolute / outside paths."""
    p = PurePosixPath(str(image_path).replace(os.sep, "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        stem = f"{stable_hash(image_path):08x}/{p.stem}"
    else:
        stem = str(p.with_suffix(""))
    return f"{stem}@mask{k}.jpg"


def mask_item(item: Item, ctx: Context) -> list[dict]:
    """Runner stage: one image item (payload = its face rows) -> masked rows (and the originals if asked)."""
    o = ctx.options
    rows = sorted(item.payload, key=lambda r: r["sample_id"])
    src = Path(rows[0]["image_path"])  # manifests.resolve_image, with the base folder found once per run
    src = src if src.is_absolute() else Path(o["src_base"]) / src
    try:
        img = imageio.read_rgb(src)
    except imageio.ImageError as e:
        raise StageError(src, str(e).split(": ", 1)[-1]) from None
    H, W = img.shape[:2]
    if (W, H) != (int(rows[0]["width"]), int(rows[0]["height"])):
        raise StageError(src, f"image is {W}x{H}, the manifest says {rows[0]['width']}x{rows[0]['height']}")
    images_dir = Path(o["images_dir"])
    template = _template(ctx)
    base = o["out_base"]  # ctx.base, found once per run
    out = []
    if o.get("include_original"):
        for row in rows:
            out.append({**row, "image_path": os.path.relpath(src, base)})
    per_face, style_set = int(o.get("per_face", 1)), o.get("style_set", "all")
    for k in range(per_face):
        canvas = img if k == per_face - 1 else img.copy()  # the last variant may draw on the decoded image
        masks = []
        for row in rows:
            rng = ctx.rng(row["sample_id"], k)
            style = sample_style(rng, o.get("styles"), o.get("coverage") or ("normal",), style_set)
            try:
                if row.get("mask"):
                    raise Unmaskable(f"already masked ({row['mask']})")
                masks.append(mask_face(canvas, row, style, rng, template))
            except Unmaskable as e:
                ctx.report(src, f"{row['sample_id']}: {e}")
                masks.append(None)
        if all(m is None for m in masks):
            continue
        rel = output_name(item.key, k)
        dest = images_dir / rel
        imageio.write_rgb(dest, canvas)
        for j, (row, fm) in enumerate(zip(rows, masks)):
            new = dict(row)
            new.update(sample_id=f"{row['sample_id']}@mask{k}", parent_id=row["sample_id"],
                       image_path=os.path.relpath(dest, base))
            if fm is None:
                new["augment"] = append_augment(row, "mask", k=k, style=None)
            else:
                new.update(mask=fm.style.name, mask_coverage=fm.mode, occluded=fm.occluded,
                           augment=append_augment(row, "mask", k=k, style=fm.style.name, coverage=fm.mode,
                                                  top=round(fm.coverage, 4), seed=ctx.seed, set=style_set))
                if o.get("write_mask_png"):
                    png = dest.with_name(f"{dest.stem}.m{j}.png")
                    a = np.rint(fm.full_alpha(H, W) * 255).astype(np.uint8)
                    imageio.write_atomic(png, imageio.encode(a, ".png"))
                    new["mask_path"] = os.path.relpath(png, base)
            out.append(new)
    return out


def build_masked(manifest, out, images_dir, *, styles: str | None = None, coverage: str | None = None,
                 style_set: str = "all", per_face: int = 1, seed: int = 0, workers: int = 1,
                 include_original: bool = False, write_mask_png: bool = False, shard=None, strict: bool = False,
                 resume: bool = True, chunk_size: int = 32, template=None):
    """Mask every face of the manifest `manifest`; writes images under images_dir and the manifest `out`.

    styles: '--styles' text (kinds or kind/pattern, comma separated; None = all); coverage: mode names
    'normal,below-nose,chin' or 'LO:HI' (0 = chin .. 1 = nose root); style_set: 'all', 'train' or 'heldout'
    (styles.STYLE_SETS: a fixed split of the style families, see the styles module); template: (68, 3)
    head-frame 3D landmarks for rows without landmarks_3d (default: hpe_data.head.TEMPLATE_68).
    Returns runner.Result.

    Masked evaluation protocol. Masked test sets made by different generators do not compare, and testing on
    the styles a model was trained with is optimistic. The protocol fixes both: train with
    `style_set="train"` (any seed); build the masked test set from the clean AFLW2000 / BIWI test manifest
    with `style_set="heldout"`, `coverage="normal,below-nose,chin"`, `seed=0`, `per_face=1` (the defaults
    otherwise). Everything a face gets (style, colours, coverage, geometry jitter, noise) is drawn from
    (seed, sample_id, k) only, so the same inputs and seed give the same images and rows (mask,
    mask_coverage, occluded, augment lineage with style, coverage, top, seed and set) on any machine, worker
    count or shard; the rows are the per-image metadata of the protocol.
    """
    if per_face < 1:
        raise ValueError(f"--per-face must be >= 1, got {per_face}")
    style_set = parse_style_set(style_set)
    parsed = parse_styles(styles)
    style_table(parsed, style_set)  # an empty selection fails here, not once per face
    options = dict(
        manifest=str(Path(manifest).absolute()), images_dir=str(Path(images_dir).absolute()),
        src_base=str(manifests.base_dir(Path(manifest).absolute())), out_base=str(manifests.base_dir(out)),
        styles=parsed, coverage=parse_coverage(coverage), style_set=style_set, per_face=int(per_face),
        include_original=bool(include_original), write_mask_png=bool(write_mask_png),
        template=None if template is None else np.asarray(template, dtype=np.float64),
    )
    warm_up()  # compiled code loads once, here, before workers fork
    table = manifests.read(manifest)
    items = group_by_image(table)
    return run(mask_item, items, out, seed=seed, workers=workers, shard=shard, options=options, desc="build-masked",
               chunk_size=chunk_size, resume=resume, strict=strict)


_warm_on_import()
