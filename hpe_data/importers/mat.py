"""300W-LP and AFLW2000-3D importers: MATLAB v5 `.mat` labels beside 450x450 JPEGs (conventions §3).

Pixel convention. The `.mat` coordinates (`pt2d`, `pt3d_68`, `pts_2d`) are 1-based MATLAB pixels: the data
were made in MATLAB, where the first pixel centre is 1, and 3DDFA's projection flips y as 451 - y on the
450-px images (H + 1 - y, a mirror about the 1-based centre 225.5; the 0-based mirror would be H - 1 - y).
Manifests hold 0-based pixels, so rows get x - 1 and y - 1; z of `pt3d_68` is left as it is.
What the real files show (tests/test_import_mat.py):
- `pt3d_68` and the 21-point AFLW annotation `pt2d` share one pixel base: visible counterparts (eye
  corners, nose, mouth corners, chin) agree to a few pixels with no common offset (mean offset below 0.5 px),
  so one shift applies to both. They cannot tell 1-based from 0-based by themselves.
- 3DDFA's `test.configs/AFLW2000-3D.pts68.npy` (2000, 3, 68) and `AFLW2000-3D.pts21.npy` (2000, 2, 21) hold
  exactly the `pt3d_68` / `pt2d` arrays of the `.mat` files, float32 bit for bit, full 450-px frame (not
  the crops of `AFLW2000-3D_crop.roi_box.npy`), rows in sorted file-name order (row 28 = image00050), sentinels
  included; `AFLW2000-3D.pose.npy` is the yaw in degrees. So 3DDFA benchmarks against the same 1-based values
  (its own predictions use the same 1-based y-flip), a cross-check of provenance, not of the base.
The base therefore rests on how the files were produced (MATLAB, the 451 - y flip). It matters at the
1-pixel level only.

300W-LP (`items_300wlp`): every folder under the root that holds `.mat` files is a subset (AFW, HELEN,
IBUG, LFPW and their `_Flip` twins in the public release); `landmarks/` is not. Landmarks come from
`landmarks/<subset>/<name>_pts.mat` (`pts_2d`, source `annotation-pts_2d`; shape (68, 2) per loader code,
*unverified* on a real file, (2, 68) accepted too) where that file exists, else from `pt2d` (source
`annotation`). The release has no `landmarks/*_Flip` folders, so `_Flip` rows use their own `pt2d`.
Visible = inside the frame (the annotation carries no occlusion flags). `subject` is the source photo id (the
file stem without its trailing view index, e.g. `AFW_134212_1` for `AFW_134212_1_3`), shared by the flip
twin and all synthesised views, so that splits by subject keep them together.

AFLW2000 (`items_aflw2000`): landmarks and `landmarks_3d` from `pt3d_68` (source `fitted`). `pt2d` is the
21-point AFLW annotation with `(-1, 452)` for unannotated points; it never enters a box (boxes come from the
68 fitted points inside the frame) and is used only for visibility:
- points with a 21-point counterpart (brow corners and centres, eye corners and centres, nose alae and tip,
  mouth corners and centre, chin; see `AFLW21_TO_68`) are visible when the annotator placed that point
  (the annotation is the better evidence; an unannotated point may also be hidden by hair or a hand);
- the other points use the mesh self-occlusion test `importers.mesh_visible` on `pt3d_68` de-rotated with
  the row's own rotation (z towards the viewer is the depth);
- every point outside the frame is not visible.
Measured on synthetic AFLW2000-format files with z-buffer visibility truth (`hpe_data.synth`, poses up to
+-90 degrees yaw, 120 samples): 92% of the labels agree; 71% of the hidden points are found and 98% of the
visible ones stay visible (the mesh has no cheek bulge, so far-side points near the silhouette stay visible
too long). On the 16 real samples the frontal ones are all visible and at |yaw| > 50 the far-side jaw is hidden.

Angles: `Pose_Para[0, :3]` in radians -> degrees (pitch, yaw, roll), `rotation = pose.to_matrix(...)`.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import scipy.io

from .. import pose
from ..runner import Context, Item, StageError
from ..transforms import in_frame
from . import image_size, landmark_box, mesh_visible, relative

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LANDMARKS_DIR = "landmarks"

# 21-point AFLW annotation (0-based order as stored in AFLW2000 `pt2d`; "left" = image-left, checked on the
# real samples) -> iBUG-68 indices of the same facial point. The ears (12, 16) have no counterpart.
AFLW21_TO_68: dict[int, tuple[int, ...]] = {
    0: (17,), 1: (19,), 2: (21,),  # image-left brow: outer, centre, inner
    3: (22,), 4: (24,), 5: (26,),  # image-right brow: inner, centre, outer
    6: (36,), 7: (37, 38, 40, 41), 8: (39,),  # image-left eye: outer, centre (lids), inner
    9: (42,), 10: (43, 44, 46, 47), 11: (45,),  # image-right eye: inner, centre, outer
    13: (31,), 14: (30,), 15: (35,),  # nose: left ala, tip, right ala
    17: (48,), 18: (62, 66), 19: (54,),  # mouth: left corner, centre (inner lips), right corner
    20: (8,),  # chin
}


# ---------------------------------------------------------------- .mat reading


try:  # the v5 reader alone: loadmat's file-type sniffing costs as much again per small file
    from scipy.io.matlab._mio5 import MatFile5Reader
except ImportError:  # private scipy module moved: fall back to the public loader
    MatFile5Reader = None


def load_mat(path) -> dict:
    """The variables of a MATLAB v5 file; StageError naming the file on anything unreadable.

    Everything is read (no `variable_names`): scipy then fails on a truncated file instead of silently
    returning the variables before the cut.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise StageError(path, "label file missing") from None
    except OSError as e:
        raise StageError(path, f"label file unreadable ({e.strerror or e})") from None
    # v5 header: 116 text bytes, 8 subsystem bytes, version 0x0100, endian mark 'IM' or 'MI'
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI") or data[124:126] not in (b"\x00\x01", b"\x01\x00"):
        raise StageError(path, f"not a MATLAB v5 .mat file ({len(data)} bytes, no v5 header)")
    try:
        if MatFile5Reader is not None:
            return MatFile5Reader(io.BytesIO(data)).get_variables()
        return scipy.io.loadmat(io.BytesIO(data))
    except Exception as e:  # scipy raises many kinds on truncated or damaged files
        raise StageError(path, f"not a readable MATLAB v5 .mat file ({type(e).__name__}: {e})") from None


def pose_angles(m: dict, path) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees from `Pose_Para` (radians)."""
    if "Pose_Para" not in m:
        raise StageError(path, "no Pose_Para variable")
    p = np.asarray(m["Pose_Para"])
    if p.dtype.kind not in "fiu" or p.size < 3 or p.ndim != 2 or p.shape[0] != 1:
        raise StageError(path, f"Pose_Para has shape {p.shape} ({p.dtype}), expected (1, 7) numbers")
    a = p[0, :3].astype(np.float64)
    if not np.isfinite(a).all():
        raise StageError(path, f"Pose_Para angles are not finite: {a.tolist()}")
    d = 180.0 / math.pi
    return float(a[0] * d), float(a[1] * d), float(a[2] * d)


def points(m: dict, key: str, path, n: int, k: int) -> np.ndarray:
    """A (k, n) or (n, k) MATLAB array of 1-based points -> (n, k) float64, x and y made 0-based."""
    if key not in m:
        raise StageError(path, f"no {key} variable")
    a = np.asarray(m[key])
    if a.dtype.kind not in "fiu":
        raise StageError(path, f"{key} is not numeric ({a.dtype})")
    if a.shape == (k, n):
        a = a.T
    elif a.shape != (n, k):
        raise StageError(path, f"{key} has shape {a.shape}, expected ({k}, {n})")
    a = a.astype(np.float64)  # a copy: the shift below never touches the loaded array
    if not np.isfinite(a).all():
        raise StageError(path, f"{key} holds non-finite values")
    a[:, :2] -= 1.0
    return a


def _pose_columns(pitch: float, yaw: float, roll: float) -> dict:
    R = pose.to_matrix(pitch, yaw, roll)
    return dict(yaw=yaw, pitch=pitch, roll=roll, rotation=R.reshape(9),
                in_range=bool(pose.in_range(pitch, yaw, roll)))


def _listdir(path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _image_for(folder: str, stem: str, names: set[str]) -> str:
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            if stem + e in names:
                return os.path.join(folder, stem + e)
    return os.path.join(folder, stem + ".jpg")  # reported as missing when the item runs


def source_id(stem: str) -> str:
    """Photo id of a 300W-LP file stem: the stem without its trailing view index (`AFW_134212_1_3`)."""
    head, _, tail = stem.rpartition("_")
    return head if head and tail.isdigit() else stem


# ---------------------------------------------------------------- 300W-LP


def items_300wlp(root) -> list[Item]:
    """One item per `.mat` in every subset folder under `root` (folders discovered, `_Flip` twins included).

    A root whose only dataset folder is `300W_LP/` (the release archive's top folder) is entered.
    """
    root = Path(root).absolute()
    if (root / "300W_LP").is_dir() and not any(
            n.endswith(".mat") for d in _listdir(root) if d != "300W_LP" for n in _listdir(root / d)):
        root = root / "300W_LP"
    out = []
    for sub in _listdir(root):
        folder = str(root / sub)
        if sub == LANDMARKS_DIR or sub.startswith(".") or not os.path.isdir(folder):
            continue
        names = _listdir(folder)
        mats = [n for n in names if n.endswith(".mat") and not n.startswith(".")]
        if not mats:
            continue
        name_set = set(names)
        pts_dir = str(root / LANDMARKS_DIR / sub)
        pts = set(_listdir(pts_dir))
        flipped = sub.endswith("_Flip")
        for m in mats:
            stem = m[:-4]
            pts_name = stem + "_pts.mat"
            out.append(Item(f"300w-lp/{sub}/{stem}", (
                os.path.join(folder, m), _image_for(folder, stem, name_set),
                os.path.join(pts_dir, pts_name) if pts_name in pts else None, stem, flipped)))
    return out


def stage_300wlp(item: Item, ctx: Context) -> list[dict]:
    mat_path, img_path, pts_path, stem, flipped = item.payload
    m = load_mat(mat_path)
    pitch, yaw, roll = pose_angles(m, mat_path)
    if pts_path is not None:
        lm = points(load_mat(pts_path), "pts_2d", pts_path, 68, 2)
        source = "annotation-pts_2d"
    else:
        lm = points(m, "pt2d", mat_path, 68, 2)
        source = "annotation"
    w, h = image_size(img_path, ctx.options.get("full_decode", False))
    vis = in_frame(lm, w, h)
    if not vis.any():
        raise StageError(mat_path, f"no landmark inside the {w}x{h} image")
    return [dict(
        sample_id=item.key, image_path=relative(img_path, ctx),
        dataset=ctx.options.get("dataset_name", "300w-lp"), subject=source_id(stem), width=w, height=h,
        bbox=landmark_box(lm, vis, w, h), landmarks=lm.reshape(-1), landmarks_3d=None, landmark_visible=vis,
        landmarks_source=source, **_pose_columns(pitch, yaw, roll), translation=None, camera=None,
        parent_id=None, augment=None, flipped=bool(flipped),
    )]


# ---------------------------------------------------------------- AFLW2000


def items_aflw2000(root) -> list[Item]:
    """One item per `.mat` in `root` (or in its `AFLW2000/` folder when the root holds none)."""
    root = Path(root).absolute()
    names = _listdir(root)
    if not any(n.endswith(".mat") for n in names) and (root / "AFLW2000").is_dir():
        root, names = root / "AFLW2000", _listdir(root / "AFLW2000")
    name_set = set(names)
    return [Item(f"aflw2000/{n[:-4]}", (str(root / n), _image_for(str(root), n[:-4], name_set)))
            for n in names if n.endswith(".mat") and not n.startswith(".")]


def aflw_visible(lm3: np.ndarray, R: np.ndarray, pt2d: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """Visibility of the 68 fitted points: annotator's call where a 21-point counterpart exists, else the
    mesh self-occlusion test; never visible outside the frame. lm3: (68, 3) 0-based x, y, z towards the viewer;
    pt2d: (21, 2) 0-based AFLW annotation (sentinels fall outside the frame) or None."""
    cam = np.stack([lm3[:, 0], lm3[:, 1], -lm3[:, 2]], 1)
    head = (cam - cam.mean(0)) @ R  # rows R.T @ p: the frontal (de-rotated) layout
    vis = mesh_visible(lm3[:, :2], lm3[:, 2], head[:, :2])
    if pt2d is not None:
        annotated = in_frame(pt2d, width, height)
        for k, idx in AFLW21_TO_68.items():
            vis[list(idx)] = annotated[k]
    return vis & in_frame(lm3[:, :2], width, height)


def stage_aflw2000(item: Item, ctx: Context) -> list[dict]:
    mat_path, img_path = item.payload
    m = load_mat(mat_path)
    pitch, yaw, roll = pose_angles(m, mat_path)
    lm3 = points(m, "pt3d_68", mat_path, 68, 3)
    pt2d = None
    if "pt2d" in m and np.shape(m["pt2d"]) == (2, 21):
        pt2d = np.asarray(m["pt2d"], dtype=np.float64).T - 1.0
        pt2d[~np.isfinite(pt2d).all(1)] = -2.0  # unusable point: treated like a sentinel (outside the frame)
    w, h = image_size(img_path, ctx.options.get("full_decode", False))
    cols = _pose_columns(pitch, yaw, roll)
    lm = lm3[:, :2]
    inside = in_frame(lm, w, h)
    if not inside.any():
        raise StageError(mat_path, f"no landmark inside the {w}x{h} image")
    vis = aflw_visible(lm3, cols["rotation"].reshape(3, 3), pt2d, w, h)
    return [dict(
        sample_id=item.key, image_path=relative(img_path, ctx),
        dataset=ctx.options.get("dataset_name", "aflw2000"), subject=Path(mat_path).stem, width=w, height=h,
        bbox=landmark_box(lm, inside, w, h), landmarks=lm.reshape(-1), landmarks_3d=lm3.reshape(-1), landmark_visible=vis,
        landmarks_source="fitted", **cols, translation=None, camera=None, parent_id=None, augment=None,
        flipped=False,
    )]
