"""Image files: decode with a clear error, encode atomically (temp name + rename)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

cv2.setNumThreads(1)  # stages parallelise over processes; OpenCV threads would only fight them

JPEG_QUALITY = 95


class ImageError(ValueError):
    pass


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises ImageError saying why the file cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file missing")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageError(f"{path}: unreadable or truncated image ({data.size} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from a full decode (the only check that a JPEG is not truncated)."""
    h, w = read_rgb(path).shape[:2]
    return w, h


def encode(img_rgb: np.ndarray, suffix: str = ".jpg", quality: int = JPEG_QUALITY) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR) if img_rgb.ndim == 3 else img_rgb, params)
    if not ok:
        raise ImageError(f"could not encode image as {suffix}")
    return buf.tobytes()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes under a temporary name, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def write_rgb(path: str | os.PathLike, img_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> Path:
    path = Path(path)
    return write_atomic(path, encode(img_rgb, path.suffix or ".jpg", quality))
