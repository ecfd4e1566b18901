"""`images` importer: a folder of plain images (jpg/png, searched recursively), no labels.

Faces are found and given 68 landmarks by a back-end of `landmarkers` (face-alignment or dlib); one row per
face, pose columns null. `sample_id` = `images/<relative path>#<face index>`, faces numbered left to right.
The box is the landmarks' box inside the frame (`transforms.face_box`, like the labelled datasets);
`landmark_visible` = inside the frame (the back-ends say nothing about occlusion). An image without a face
gives no row and is reported ("no face found").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..imageio import ImageError, read_rgb
from ..runner import Context, Item, StageError
from ..transforms import face_box, in_frame
from . import landmarkers, relative

EXTS = {".jpg", ".jpeg", ".png"}


def items(root) -> list[Item]:
    """One item per image file under `root`; hidden folders and runner work/part folders are skipped."""
    root = Path(root).absolute()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith((".work", ".parts")))
        for f in filenames:
            if f.startswith(".") or Path(f).suffix.lower() not in EXTS:
                continue
            p = Path(dirpath) / f
            out.append(Item(f"images/{p.relative_to(root).as_posix()}", str(p)))
    return out


def stage(item: Item, ctx: Context) -> list[dict]:
    path = item.payload
    try:
        img = read_rgb(path)  # the detector needs the pixels: a full decode also catches truncated files
    except ImageError as e:
        raise StageError(path, str(e).split(": ", 1)[-1]) from None
    h, w = img.shape[:2]
    backend = landmarkers.get(ctx.options["landmarks"])
    faces = sorted(backend.detect(img), key=lambda f: (float(f.box[0]), float(f.box[1])))
    rows = []
    for k, f in enumerate(faces):
        lm = np.asarray(f.landmarks, dtype=np.float64).reshape(68, 2)
        vis = in_frame(lm, w, h)
        if not vis.any():
            ctx.report(path, f"face {k}: no landmark inside the image")
            continue
        rows.append(dict(
            sample_id=f"{item.key}#{k}", image_path=relative(path, ctx),
            dataset=ctx.options.get("dataset_name", "images"), subject=None, width=w, height=h,
            bbox=face_box(lm, w, h), landmarks=lm.reshape(-1), landmarks_3d=None, landmark_visible=vis,
            landmarks_source=backend.name, yaw=None, pitch=None, roll=None, rotation=None, in_range=None,
            translation=None, camera=None, parent_id=None, augment=None,
        ))
    if not faces:
        ctx.report(path, f"no face found ({backend.name})")
    return rows
