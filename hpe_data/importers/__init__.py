"""Dataset importers: raw dataset folders -> manifest v1 rows, each run as a stage of `hpe_data.runner`.

`import_dataset(name, root, out, ...)` is the one entry point (the `hpe-data import` command calls it).
Formats: `300w-lp`, `aflw2000` (`mat.py`), `biwi` (`biwi.py`), `images` (`images.py`, faces found by a
landmark back-end from `landmarkers.py`).

Helpers shared by the importers live here: cheap image size + truncation checks, and the landmark
self-occlusion test.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..runner import Item, Result, StageError, run

DATASETS = ("300w-lp", "aflw2000", "biwi", "images")
DEPTH_TO_RGB = ("R*p+T", "R^T*(p-T)")
LANDMARKS = ("auto", "projected", "face-alignment", "dlib")

# Items per runner chunk: .mat rows are cheap (bigger chunks amortise the per-chunk Parquet write),
# detector rows are slow (small chunks keep resume and worker balance fine-grained).
CHUNK_SIZE = {"300w-lp": 512, "aflw2000": 512, "biwi": 256, "images": 8}


def import_dataset(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    strict: bool = False,
    seed: int = 0,
    landmarks: str = "auto",
    depth_to_rgb: str = "R*p+T",
    head_size_mm: float = 200.0,
    biwi_box: str = "landmarks",
    full_decode: bool = False,
    chunk_size: int | None = None,
    resume: bool = True,
    **options,
) -> Result:
    """Import a dataset folder into the manifest `out` (or one part file of it with `shard`).

    Bad inputs are reported (path, reason) to `<out>.errors.csv` and skipped; `strict` makes the run raise
    `StageError` after writing the good rows. Raises `StageError` when no row could be written and
    `ValueError` for unusable settings (unknown dataset, back-end without weights, ...).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: dataset root is not a folder")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if landmarks not in LANDMARKS:
        raise ValueError(f"unknown landmark source {landmarks!r}; expected one of {', '.join(LANDMARKS)}")
    if depth_to_rgb not in DEPTH_TO_RGB:
        raise ValueError(f"--depth-to-rgb must be one of {DEPTH_TO_RGB}, got {depth_to_rgb!r}")
    opts = dict(full_decode=bool(full_decode), **options)
    if dataset in ("300w-lp", "aflw2000"):
        if landmarks != "auto":
            raise ValueError(f"{dataset} carries its own landmarks; --landmarks {landmarks} does not apply")
        from . import mat

        fn = mat.stage_300wlp if dataset == "300w-lp" else mat.stage_aflw2000
        items = mat.items_300wlp(root) if dataset == "300w-lp" else mat.items_aflw2000(root)
    elif dataset == "biwi":
        from . import biwi

        if landmarks == "dlib":
            raise ValueError("biwi: use --landmarks projected (default) or face-alignment")
        source = "projected" if landmarks in ("auto", "projected") else landmarks
        if source == "face-alignment":
            from . import landmarkers

            landmarkers.require("face-alignment")
        fn, items = biwi.stage, biwi.items(root)
        if biwi_box not in ("head", "landmarks"):
            raise ValueError(f"biwi box must be 'head' or 'landmarks', got {biwi_box!r}")
        opts.update(depth_to_rgb=depth_to_rgb, head_size_mm=float(head_size_mm), landmarks=source, box=biwi_box)
    else:
        from . import images, landmarkers

        if landmarks == "projected":
            raise ValueError("images: there is no pose to project landmarks from; use auto, face-alignment or dlib")
        backend = landmarkers.resolve(landmarks)
        landmarkers.require(backend)  # fail before the run, with the missing files named
        fn, items = images.stage, images.items(root)
        opts.update(landmarks=backend)
    opts.setdefault("dataset_name", dataset)
    if not items:
        raise StageError(root, f"no {dataset} input files found under this folder")
    return run(fn, items, out, seed=seed, workers=workers, shard=shard, options=opts,
               desc=f"import {dataset}", chunk_size=chunk_size or CHUNK_SIZE[dataset], resume=resume,
               strict=strict)


_BASES: dict[str, str] = {}


def relative(path: str, ctx) -> str:
    """`os.path.relpath(path, ctx.base)`, with the base folder worked out once per process (it costs a stat)."""
    key = str(ctx.out)
    base = _BASES.get(key)
    if base is None:
        base = _BASES[key] = str(ctx.base)
    return os.path.relpath(path, base)


# ---------------------------------------------------------------- image size without a full decode

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def _jpeg_size(data: bytes, path) -> tuple[int, int] | None:
    """(width, height) from the SOF segment; None when the file needs a full decode (EXIF orientation)."""
    # A JPEG cut short loses its end-of-image marker; trailing zero padding is tolerated.
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise StageError(path, f"truncated JPEG: no end-of-image marker ({len(data)} bytes)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise StageError(path, f"corrupt JPEG: no marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE1 and data[i + 4:i + 8] == b"Exif":
            return None  # OpenCV applies EXIF orientation when decoding: let the decoder say the size
        if marker in _SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            if w == 0 or h == 0:
                raise StageError(path, f"corrupt JPEG: frame size {w}x{h}")
            return w, h
        if marker == 0xDA:  # image data starts before any frame header
            break
        i += 2 + seg
    raise StageError(path, "corrupt JPEG: no frame header")


def _png_size(data: bytes, path) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise StageError(path, "corrupt PNG: no IHDR chunk")
    if not data.endswith(_PNG_END):
        raise StageError(path, f"truncated PNG: no IEND chunk at the end ({len(data)} bytes)")
    w, h = struct.unpack(">II", data[16:24])
    if w == 0 or h == 0:
        raise StageError(path, f"corrupt PNG: image size {w}x{h}")
    return w, h


def image_size(path: str | os.PathLike, full_decode: bool = False) -> tuple[int, int]:
    """(width, height) of an image file, as `imageio.read_rgb` would decode it.

    JPEG and PNG sizes come from the headers (tens of microseconds instead of a ~0.5 ms decode); truncation is
    caught by checking the end marker (JPEG EOI 0xFFD9, PNG IEND chunk). That misses damage in the middle of a
    file: `full_decode=True` decodes every image instead.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise StageError(path, "image file missing") from None
    except OSError as e:
        raise StageError(path, f"image file unreadable ({e.strerror or e})") from None
    if not data:
        raise StageError(path, "image file is empty")
    if not full_decode:
        if data[:2] == b"\xff\xd8":
            size = _jpeg_size(data, path)
            if size is not None:
                return size
        elif data[:8] == _PNG_SIG:
            return _png_size(data, path)
    return decode_size(path)


def decode_size(path) -> tuple[int, int]:
    from ..imageio import ImageError, read_rgb

    try:
        h, w = read_rgb(path).shape[:2]
    except ImageError as e:
        raise StageError(path, str(e).split(": ", 1)[-1]) from None
    return w, h


def landmark_box(lm: np.ndarray, inside: np.ndarray, width: int, height: int) -> np.ndarray:
    """`transforms.face_box` when the in-frame mask of the points is already known (the 300W-LP hot path)."""
    p = lm[inside]
    x1, y1 = p.min(0)
    x2, y2 = p.max(0)
    return np.array([min(max(x1, 0.0), width - 1.0), min(max(y1, 0.0), height - 1.0),
                     min(max(x2, 0.0), width - 1.0), min(max(y2, 0.0), height - 1.0)])


# ---------------------------------------------------------------- self-occlusion of 68 landmarks


def mesh_visible(xy: np.ndarray, near: np.ndarray, head_xy: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Landmarks not hidden by the face itself, by a z-buffer test on a mesh of the 68 points.

    xy: (68, 2) image positions; near: (68,) depth towards the viewer (larger = nearer), in the units of
    `head_xy`; head_xy: (68, 2) the same points in the head frame seen from the front (de-rotated), which
    gives the triangulation (Delaunay of the frontal layout). A point is hidden when its image position falls
    inside a triangle not touching it whose surface there is nearer by more than `margin` x face width
    (jaw 0 to jaw 16): at large yaw the far-side eye, brow and jaw points fall behind the nose and cheek.
    The mesh is coarse (no cheek bulge): points near the silhouette can be called visible a little too long.
    """
    from scipy.spatial import Delaunay, QhullError

    xy = np.asarray(xy, dtype=np.float64)
    near = np.asarray(near, dtype=np.float64)
    n = len(xy)
    try:
        tri = Delaunay(np.asarray(head_xy, dtype=np.float64)).simplices
    except (QhullError, ValueError):
        return np.ones(n, bool)  # degenerate layout: nothing can be told
    width = float(np.linalg.norm(np.asarray(head_xy)[0] - np.asarray(head_xy)[16])) if n == 68 else 1.0
    a = xy[tri]  # (T, 3, 2)
    e1, e2 = a[:, 1] - a[:, 0], a[:, 2] - a[:, 0]
    den = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(den) > 1e-9  # triangles seen edge-on cover nothing
    den = np.where(ok, den, 1.0)
    d = xy[:, None, :] - a[None, :, 0]  # (N, T, 2)
    b1 = (d[..., 0] * e2[:, 1] - d[..., 1] * e2[:, 0]) / den
    b2 = (e1[:, 0] * d[..., 1] - e1[:, 1] * d[..., 0]) / den
    b0 = 1.0 - b1 - b2
    inside = ok & (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    z = b0 * near[tri[:, 0]] + b1 * near[tri[:, 1]] + b2 * near[tri[:, 2]]
    own = (tri[None, :, :] == np.arange(n)[:, None, None]).any(2)
    hidden = (inside & ~own & (z > near[:, None] + margin * width)).any(1)
    return ~hidden


__all__ = ["DATASETS", "DEPTH_TO_RGB", "LANDMARKS", "Item", "StageError", "decode_size", "image_size",
           "import_dataset", "landmark_box", "mesh_visible", "relative"]
