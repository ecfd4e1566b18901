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

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

import manifests

from .. import imageio, render
from ..runner import Context, Item, StageError, group_by_image, run, stable_hash
from ..transforms import append_augment
from . import composite as C
from . import geometry as G
from .styles import Style, coverage_value, parse_coverage, parse_styles, sample_style

SENTINELS = ((-1.0, 452.0), (-2.0, 451.0))  # AFLW unannotated point, 1-based and 0-based
SKIN_TRIS = (G.PROXY_TRIS < G.N_SKIN).all(1)  # proxy triangles on the face (not the skirt): light samples
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


def _valid_2d(lm: np.ndarray, width: int, height: int) -> np.ndarray:
    ok = np.isfinite(lm).all(1)
    ok &= (lm[:, 0] > -0.5 * width) & (lm[:, 0] < 1.5 * width) & (lm[:, 1] > -0.5 * height) & (lm[:, 1] < 1.5 * height)
    for sx, sy in SENTINELS:
        ok &= ~((lm[:, 0] == sx) & (lm[:, 1] == sy))
    return ok


def face_landmarks_3d(row: dict, template: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(68, 3) landmarks_3d of a row and where they came from ('landmarks_3d' or 'template')."""
    W, H = int(row["width"]), int(row["height"])
    R = np.asarray(row["rotation"], dtype=np.float64).reshape(3, 3)
    l3 = row.get("landmarks_3d")
    if l3 is not None:
        l3 = np.asarray(l3, dtype=np.float64).reshape(68, 3)
        if np.isfinite(l3).all() and _valid_2d(l3[:, :2], W, H).all():
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


def _shade(grid: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Per-vertex geometric shade of the mask: brighter where it faces the camera and faces up."""
    du, dv = np.gradient(grid, axis=1), np.gradient(grid, axis=0)
    n = np.cross(dv, du)  # towards the viewer in the head frame
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)
    nc = n @ R.T
    return np.clip(0.62 + 0.38 * np.maximum(-nc[..., 2], 0.0) - 0.15 * nc[..., 1], 0.45, 1.05).reshape(-1)


def mask_face(img: np.ndarray, row: dict, style: Style, rng: np.random.Generator,
              template: np.ndarray | None = None, loops: bool = True) -> FaceMask:
    """Draw one face's mask into img (H, W, 3) uint8 RGB, in place. Raises Unmaskable with the reason.

    template: (68, 3) head-frame 3D landmarks for a row without landmarks_3d (None: such a row is
    Unmaskable); loops: draw ear loops. Pixels the mask does not reach stay bit-identical.
    """
    H, W = img.shape[:2]
    if row.get("rotation") is None or not np.isfinite(np.asarray(row["rotation"], dtype=np.float64)).all():
        raise Unmaskable("no rotation")
    R = np.asarray(row["rotation"], dtype=np.float64).reshape(3, 3)
    l3, _ = face_landmarks_3d(row, template)
    S, c = G.head_frame(l3, R)
    _check_shape(S)
    r = G.scale_of(S)
    if r < MIN_SCALE_PX:
        raise Unmaskable(f"face too small to mask (scale {r:.1f} px)")
    heights = G.midline_heights(S)
    cov = coverage_value(style, heights)
    mode = style.coverage_mode or G.coverage_mode(S, cov)

    proxy = G.proxy_points(S)
    m = G.mask_surface(S, proxy, style.profile, cov, jitter=np.array(style.jitter))
    Vp, Vm = G.to_image(proxy, R, c), G.to_image(m.verts, R, c)
    inside = ((Vm[:, 0] >= 0) & (Vm[:, 0] <= W - 1) & (Vm[:, 1] >= 0) & (Vm[:, 1] <= H - 1)).mean()
    if inside < MIN_INSIDE:
        raise Unmaskable(f"mask mostly outside the image ({100 * inside:.0f} % of it inside)")
    nv, nu = m.grid.shape[:2]
    Tm = G.grid_tris(nv, nu)
    uu, vv, _ = G.grid_uv(nv, nu)
    attr_m = np.stack([uu.reshape(-1), vv.reshape(-1), _shade(m.grid, R)], 1)

    # the proxy is pushed back a little for the depth test: it is a coarse stand-in for the face, and the
    # mask (in front by its standoff) must not lose to it where chords of the two meshes cross; real
    # occluders (the nose and cheek over the far side) are much nearer than this
    Vz = Vp + np.array([0.0, 0.0, PROXY_DEPTH_BIAS * r])
    keep = ~G.covered_tris(m, proxy)  # triangles under the mask cannot hide it
    Tp = G.PROXY_TRIS[keep]
    verts, tris, attrs = [Vz, Vm], [Tp, Tm + len(Vp)], [np.zeros((len(Vp), 3)), attr_m]
    n_verts = len(Vp) + len(Vm)
    if loops:
        width_px = max(1.2, 0.035 * r)
        for side, poly in G.loop_polylines(m, r):
            if (R @ np.array([-1.0 if side == 0 else 1.0, 0.0, 0.0]))[2] > 0.3:
                continue  # that side of the head faces away: the loop is behind it
            v, f = G.ribbon(G.to_image(poly, R, c), width_px)
            verts.append(v)
            tris.append(f + n_verts)
            attrs.append(np.tile([0.0, 0.0, 0.9], (len(v), 1)))
            n_verts += len(v)
    V, T, A = np.concatenate(verts), np.concatenate(tris), np.concatenate(attrs)

    lo = np.floor(V[len(Vp):, :2].min(0)) - 4
    hi = np.ceil(V[len(Vp):, :2].max(0)) + 5
    x0, y0 = int(max(lo[0], 0)), int(max(lo[1], 0))
    x1, y1 = int(min(hi[0], W)), int(min(hi[1], H))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise Unmaskable("mask outside the image")
    window = (x0, y0, x1, y1)
    ras = render.rasterize(V, T, H, W, window=window)
    params = C.pack(style, r, m.width / r, m.height / r)
    n_proxy, n_body = len(Tp), len(Tm)
    col, vis = C.albedo(ras, ras.faces, A, n_proxy, n_body, params)
    if not vis.any():
        raise Unmaskable("mask not visible (hidden behind the head)")
    lut = np.append(SKIN_TRIS[keep], False)  # index -1 (empty pixel or mask) -> False
    skin = lut[np.where(ras.face_id < n_proxy, ras.face_id, -1)].astype(np.float32)
    alpha = C.composite(img, window, col, vis, skin, r, rng)

    # occlusion labels at the landmark pixels
    L3 = G.to_image(S, R, c)
    lm = row.get("landmarks")
    pos = L3[:, :2].copy() if lm is None else np.asarray(lm, dtype=np.float64).reshape(68, 2).copy()
    bad = ~np.isfinite(pos).all(1)
    pos[bad] = L3[bad, :2]
    px, py = np.rint(pos[:, 0]).astype(int), np.rint(pos[:, 1]).astype(int)
    inwin = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
    qx, qy = np.clip(px - x0, 0, x1 - x0 - 1), np.clip(py - y0, 0, y1 - y0 - 1)
    a = np.where(inwin, alpha[qy, qx], 0.0)
    # the mask is in front of the landmark where it wins the depth test there; the same tolerance as the
    # proxy's bias, since a mask following a convex chin or lips can pass a hair behind their vertices
    front = inwin & (ras.face_id[qy, qx] >= n_proxy) & (ras.depth[qy, qx] < L3[:, 2] + PROXY_DEPTH_BIAS * r)
    selfocc = G.self_occluded(L3, Vp, tol=0.05 * r)
    occluded = (a > 0.5) & front & ~selfocc
    if row.get("landmark_visible") is not None:  # hidden already (by the face, a hand, the frame): not the mask
        occluded &= np.asarray(row["landmark_visible"], dtype=bool)
    return FaceMask(style, float(cov), mode, alpha, window, occluded, selfocc)


# --------------------------------------------------------------------------------------------- the stage


def _template(ctx: Context):
    t = ctx.options.get("template")
    if t is not None:
        return np.asarray(t, dtype=np.float64)
    try:
        from ..head import TEMPLATE_68
    except ImportError:
        return None
    return np.asarray(TEMPLATE_68, dtype=np.float64)


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
    src = manifests.resolve_image(o["manifest"], rows[0]["image_path"])
    try:
        img = imageio.read_rgb(src)
    except imageio.ImageError as e:
        raise StageError(src, str(e).split(": ", 1)[-1]) from None
    H, W = img.shape[:2]
    if (W, H) != (int(rows[0]["width"]), int(rows[0]["height"])):
        raise StageError(src, f"image is {W}x{H}, the manifest says {rows[0]['width']}x{rows[0]['height']}")
    images_dir = Path(o["images_dir"])
    template = _template(ctx)
    out = []
    if o.get("include_original"):
        for row in rows:
            out.append({**row, "image_path": os.path.relpath(src, ctx.base)})
    for k in range(int(o.get("per_face", 1))):
        canvas = img.copy()
        masks = []
        for row in rows:
            rng = ctx.rng(row["sample_id"], k)
            style = sample_style(rng, o.get("styles"), o.get("coverage") or ("normal",))
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
                       image_path=os.path.relpath(dest, ctx.base))
            if fm is None:
                new["augment"] = append_augment(row, "mask", k=k, style=None)
            else:
                new.update(mask=fm.style.name, mask_coverage=fm.mode, occluded=fm.occluded,
                           augment=append_augment(row, "mask", k=k, style=fm.style.name, coverage=fm.mode,
                                                  top=round(fm.coverage, 4), seed=ctx.seed))
                if o.get("write_mask_png"):
                    png = dest.with_name(f"{dest.stem}.m{j}.png")
                    a = np.rint(fm.full_alpha(H, W) * 255).astype(np.uint8)
                    imageio.write_atomic(png, imageio.encode(a, ".png"))
                    new["mask_path"] = os.path.relpath(png, ctx.base)
            out.append(new)
    return out


def build_masked(manifest, out, images_dir, *, styles: str | None = None, coverage: str | None = None,
                 per_face: int = 1, seed: int = 0, workers: int = 1, include_original: bool = False,
                 write_mask_png: bool = False, shard=None, strict: bool = False, resume: bool = True,
                 chunk_size: int = 32, template=None):
    """Mask every face of the manifest `manifest`; writes images under images_dir and the manifest `out`.

    styles: '--styles' text (kinds or kind/pattern, comma separated; None = all); coverage: mode names
    'normal,below-nose,chin' or 'LO:HI' (0 = chin .. 1 = nose root); template: (68, 3) head-frame 3D
    landmarks for rows without landmarks_3d (default: hpe_data.head.TEMPLATE_68). Returns runner.Result.
    """
    if per_face < 1:
        raise ValueError(f"--per-face must be >= 1, got {per_face}")
    options = dict(
        manifest=str(Path(manifest).absolute()), images_dir=str(Path(images_dir).absolute()),
        styles=parse_styles(styles), coverage=parse_coverage(coverage), per_face=int(per_face),
        include_original=bool(include_original), write_mask_png=bool(write_mask_png),
        template=None if template is None else np.asarray(template, dtype=np.float64),
    )
    table = manifests.read(manifest)
    items = group_by_image(table)
    return run(mask_item, items, out, seed=seed, workers=workers, shard=shard, options=options, desc="build-masked",
               chunk_size=chunk_size, resume=resume, strict=strict)
