"""Timing helpers shared by the benchmark cases."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from hpe_data import imageio


def best_of(fn, repeats: int = 3) -> float:
    """Shortest wall time of `repeats` calls (the least disturbed by other load on the machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_latency(fn, runs: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def jpeg_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.jpg") if not p.name.startswith("."))


def decode_encode_floor(files: list[Path], out_dir: Path) -> float:
    """Seconds per image to decode each JPEG and encode + write it again: the floor of any image stage."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def run():
        for i, f in enumerate(files):
            imageio.write_rgb(out_dir / f"{i}.jpg", imageio.read_rgb(f))

    return best_of(run) / len(files)


def decode_warp_encode_floor(files: list[Path], out_dir: Path) -> float:
    """Seconds per image for decode + one bilinear warpAffine + encode: the floor of the rotate stage."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)

    def run():
        for i, f in enumerate(files):
            img = imageio.read_rgb(f)
            h, w = img.shape[:2]
            M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 17.0, 1.0)
            img = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            imageio.write_rgb(out_dir / f"{i}.jpg", img)

    return best_of(run) / len(files)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
