"""Contact sheet of a manifest: face crops with box, landmarks and pose axes drawn from the stored `rotation`.

A wrong convention shows at a glance: the blue (face direction) axis must point where the nose points, and
the caption's yaw sign must agree with it (+yaw: nose to image-left).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc

import manifests

from . import draw, imageio

CAPTION_H = 30  # pixels below each tile: sample id and angles


@dataclass
class Sheet:
    path: Path
    rows: list  # sample_ids in grid order (row-major)
    grid: tuple[int, int]  # (rows, cols)
    tile: int
    problems: list  # (path, reason) of images that could not be shown

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet in pixels."""
        return sheet_size(len(self.rows), self.tile, self.grid[1])


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) for n tiles: near-square unless `cols` is given."""
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def sheet_size(n: int, tile: int, cols: int | None = None) -> tuple[int, int]:
    r, c = grid_shape(n, cols)
    return c * tile, r * (tile + CAPTION_H)


def pick(yaw, n: int, seed: int = 0, sort: str = "yaw") -> np.ndarray:
    """Indices of n rows given the yaw column (NaN = no pose). `yaw`: evenly spaced rows of the yaw order (the
    extremes included, rows without a pose last); `random`: a seeded random sample in random order."""
    if sort not in ("yaw", "random"):
        raise ValueError(f"sort must be 'yaw' or 'random', got {sort!r}")
    yaw = np.asarray(yaw, dtype=np.float64)
    n = min(n, len(yaw))
    if n <= 0:
        return np.zeros(0, int)
    if sort == "random":
        return np.random.default_rng(seed).choice(len(yaw), n, replace=False)
    order = np.argsort(np.where(np.isnan(yaw), np.inf, yaw), kind="stable")
    return order[np.round(np.linspace(0, len(yaw) - 1, n)).astype(int)]


def _crop_box(row: dict, W: int, H: int, margin: float, tile: int) -> tuple[float, float, float]:
    """(x0, y0, side) of the square region shown: the box plus `margin` of its size on each side, or the whole
    image when that is small or the crop would cover most of it."""
    if max(W, H) <= tile:
        side = float(max(W, H))
        return (W - side) / 2, (H - side) / 2, side
    b = np.asarray(row["bbox"], dtype=np.float64)
    side = max(b[2] - b[0], b[3] - b[1], 8.0) * (1 + 2 * margin)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return cx - side / 2, cy - side / 2, side


def tile_image(img: np.ndarray, row: dict, tile: int = 256, margin: float = 0.35) -> np.ndarray:
    """One face as a `tile` x `tile` RGB crop with its labels drawn at tile resolution (crisp lines)."""
    H, W = img.shape[:2]
    x0, y0, side = _crop_box(row, W, H, margin, tile)
    s = tile / side
    A = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]])  # crop + resize in one warp, grey outside the image
    out = cv2.warpAffine(img, A, (tile, tile), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(64, 64, 64))
    return draw.face(out, row, scale=s, offset=(-x0 * s, -y0 * s), radius=max(1.5, tile / 140))


def caption(row: dict) -> tuple[str, str]:
    def ang(k):
        v = row.get(k)
        return "?" if v is None else f"{v:+.1f}"

    sid = str(row["sample_id"])
    return sid if len(sid) <= 34 else "..." + sid[-31:], f"y {ang('yaw')}  p {ang('pitch')}  r {ang('roll')}"


def contact_sheet(manifest, out, n: int = 16, seed: int = 0, sort: str = "yaw", tile: int = 256,
                  cols: int | None = None, margin: float = 0.35) -> Sheet:
    """Write a JPEG/PNG grid of n faces of `manifest` to `out` (size: `sheet_size(n, tile, cols)`)."""
    table = manifests.read(manifest)
    yaw = pc.fill_null(table.column("yaw"), np.nan).to_numpy()
    chosen = manifests.table_to_rows(table.take(pick(yaw, n, seed, sort)))  # only the shown rows become dicts
    if not chosen:
        raise ValueError(f"{manifest}: no rows to preview")
    nr, nc = grid_shape(len(chosen), cols)
    sheet = np.full((nr * (tile + CAPTION_H), nc * tile, 3), 24, np.uint8)
    problems, cache = [], {}
    for i, row in enumerate(chosen):
        r, c = divmod(i, nc)
        y, x = r * (tile + CAPTION_H), c * tile
        path = manifests.resolve_image(manifest, row["image_path"])
        try:
            if path not in cache:
                cache = {path: imageio.read_rgb(path)}  # faces of one image are often neighbours
            t = tile_image(cache[path], row, tile, margin)
        except imageio.ImageError as e:
            problems.append((str(path), str(e)))
            t = np.full((tile, tile, 3), 64, np.uint8)
            draw.label(t, "unreadable image", (4, tile // 2), color=(255, 80, 80))
        sheet[y: y + tile, x: x + tile] = t
        for j, text in enumerate(caption(row)):
            draw.label(sheet, text, (x + 2, y + tile + 1 + j * 14), scale=0.38, background=None)
        cv2.rectangle(sheet, (x, y), (x + tile - 1, y + tile + CAPTION_H - 1), (90, 90, 90), 1)
    out = Path(out)
    imageio.write_rgb(out, sheet, quality=90)
    return Sheet(out, [r["sample_id"] for r in chosen], (nr, nc), tile, problems)
