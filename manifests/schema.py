"""Manifest v1: one row per face, the contract between hpe_data (writes) and hpe_model (reads)."""
from __future__ import annotations

import pyarrow as pa

VERSION = "1"
VERSION_KEY = b"hpe_manifest_version"


def _fixed(t: pa.DataType, n: int) -> pa.DataType:
    return pa.list_(t, n)


# name -> (type, nullable, doc). Order is the column order on disk.
REQUIRED: dict[str, tuple[pa.DataType, bool, str]] = {
    "sample_id": (pa.string(), False, "unique, stable id of the face (derived rows append a suffix)"),
    "image_path": (pa.string(), False, "relative to the manifest's folder, or absolute"),
    "dataset": (pa.string(), False, "300w-lp | aflw2000 | biwi | images | synth-..."),
    "subject": (pa.string(), True, "person id, for splits that keep a person on one side"),
    "width": (pa.int32(), False, "image width in pixels"),
    "height": (pa.int32(), False, "image height in pixels"),
    "bbox": (_fixed(pa.float32(), 4), False, "x1, y1, x2, y2 in 0-based pixels"),
    "landmarks": (_fixed(pa.float32(), 136), True, "68 x (x, y), iBUG order, 0-based pixels"),
    "landmarks_3d": (_fixed(pa.float32(), 204), True, "68 x (x, y, z): x, y pixels, z towards the viewer"),
    "landmark_visible": (_fixed(pa.bool_(), 68), True, "false: self-occluded, outside the frame or unknown"),
    "landmarks_source": (pa.string(), True, "annotation | annotation-pts_2d | fitted | projected | face-alignment | dlib | synthetic"),
    "yaw": (pa.float64(), True, "degrees, conventions section 1"),
    "pitch": (pa.float64(), True, "degrees"),
    "roll": (pa.float64(), True, "degrees"),
    "rotation": (_fixed(pa.float64(), 9), True, "R_cv row-major, head-to-camera in the OpenCV frame"),
    "in_range": (pa.bool_(), True, "all |angles| <= 99 degrees"),
    "translation": (_fixed(pa.float64(), 3), True, "head centre in the camera frame (mm), null if unknown"),
    "camera": (_fixed(pa.float64(), 4), True, "fx, fy, cx, cy in pixels, null for weak perspective"),
    "parent_id": (pa.string(), True, "sample_id this row was derived from, null for originals"),
    "augment": (pa.string(), True, "JSON list of the operations that derived this row"),
}

# Columns later stages add; typed here so every writer agrees on them.
OPTIONAL: dict[str, tuple[pa.DataType, bool, str]] = {
    "mask": (pa.string(), True, "synthetic mask style"),
    "mask_coverage": (pa.string(), True, "normal | below-nose | chin"),
    "occluded": (_fixed(pa.bool_(), 68), True, "landmark hidden by the synthetic mask"),
    "mask_path": (pa.string(), True, "soft mask PNG (0-255 alpha), relative like image_path"),
    "rotate_deg": (pa.float64(), True, "in-plane rotation applied, counter-clockwise on screen"),
    "flipped": (pa.bool_(), True, "horizontally mirrored"),
    "valid_fraction": (pa.float32(), True, "share of the face box made of real (not border) pixels"),
    "depth_to_rgb": (pa.string(), True, "BIWI extrinsic direction used: 'R*p+T' or 'R^T*(p-T)'"),
    "sequence": (pa.string(), True, "BIWI sequence / video id"),
    "frame": (pa.int32(), True, "frame index within a sequence"),
    "split": (pa.string(), True, "train | val | test"),
}

ALL = {**REQUIRED, **OPTIONAL}

LIST_LENGTHS = {name: t.list_size for name, (t, _, _) in ALL.items() if pa.types.is_fixed_size_list(t)}


def schema_for(columns) -> pa.Schema:
    """Arrow schema with the required columns first, then known optional ones, then any extras as given."""
    fields = [pa.field(n, t, nullable=nl) for n, (t, nl, _) in REQUIRED.items()]
    fields += [pa.field(n, t, nullable=nl) for n, (t, nl, _) in OPTIONAL.items() if n in columns]
    return pa.schema(fields, metadata={VERSION_KEY: VERSION.encode()})
