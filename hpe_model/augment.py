"""Full-frame training augmentation: online in-plane rotation, random square crop, resize, flip, colour.

Faces travel as minimal manifest-style rows (width, height, bbox, landmarks (136,), landmark_visible,
rotation (9,), camera), so flips and rotations go through `hpe_data.transforms` -- the same pose-consistent
code the dataset stages use. Crop and resize only move pixels: they shift/scale boxes and landmarks and leave
the rotation untouched (R_cv is relative to the camera, which a crop does not turn).

Order: rotate the full frame (optional) -> square crop -> one resize to the training size -> flip ->
photometric distortion on 0-255 pixels. Everything random comes from the `rng` passed in, so a sample is a
pure function of (seed, epoch, index).

Crop rule (documented, as the reference detector does it): a face is kept when its box centre lies inside the
crop; its box is then clipped to the crop, its landmarks only shifted (they may leave the crop). Faces whose
clipped box is thinner than `min_face` pixels at the training size are dropped. Every crop keeps at least one
face whole.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from hpe_data import transforms as T

MEAN_RGB = (123.0, 117.0, 104.0)  # subtracted from 0-255 pixels (RetinaFace's BGR mean, in RGB order)
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)


# ---------------------------------------------------------------- geometry on face rows


def crop_faces(faces: list[dict], x0: int, y0: int, side: int) -> list[dict]:
    """Faces of the `side` x `side` crop at (x0, y0): keep box centres inside, clip boxes, shift points."""
    out = []
    for f in faces:
        x1, y1, x2, y2 = np.asarray(f["bbox"], dtype=np.float64)
        cx, cy = (x1 + x2) / 2 - x0, (y1 + y2) / 2 - y0
        if not (0 <= cx <= side - 1 and 0 <= cy <= side - 1):
            continue
        g = dict(f, width=side, height=side)
        g["bbox"] = np.clip(np.array([x1 - x0, y1 - y0, x2 - x0, y2 - y0]), 0, side - 1)
        if f.get("landmarks") is not None:
            g["landmarks"] = (np.asarray(f["landmarks"], np.float64).reshape(-1, 2) - [x0, y0]).reshape(-1)
        if f.get("camera") is not None:
            g["camera"] = np.asarray(f["camera"], np.float64) - [0, 0, x0, y0]
        out.append(g)
    return out


def resize_faces(faces: list[dict], scale: float, width: int, height: int) -> list[dict]:
    """Faces after cv2.resize by `scale`: pixel centres map as x' = (x + 0.5) * scale - 0.5."""
    out = []
    for f in faces:
        g = dict(f, width=width, height=height)
        g["bbox"] = (np.asarray(f["bbox"], np.float64) + 0.5) * scale - 0.5
        if f.get("landmarks") is not None:
            g["landmarks"] = (np.asarray(f["landmarks"], np.float64) + 0.5) * scale - 0.5
        if f.get("camera") is not None:
            fx, fy, cx, cy = np.asarray(f["camera"], np.float64)
            g["camera"] = np.array([fx * scale, fy * scale, (cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5])
        out.append(g)
    return out


def sample_crop(boxes: np.ndarray, width: int, height: int, rng: np.random.Generator,
                scales=(0.3, 1.0)) -> tuple[int, int, int]:
    """(x0, y0, side) of a random square crop of `scales` x the short side that holds one face box whole.

    The side is drawn first; one of the faces that fit is picked and the position drawn uniformly among the
    integer offsets that keep it inside (and the crop inside the frame). A face larger than the drawn side
    enlarges it; a face larger than the short side makes the crop overhang the frame (padded by the caller).
    """
    boxes = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0, [width - 1, height - 1] * 2)
    short = min(width, height)
    side = int(round(rng.uniform(*scales) * short))
    # pixels a whole box spans at integer offsets: the crop side must be at least that
    span = np.maximum(np.ceil(boxes[:, 2]) - np.floor(boxes[:, 0]), np.ceil(boxes[:, 3]) - np.floor(boxes[:, 1])) + 1
    side = max(side, int(span.min()), 1)
    fits = np.flatnonzero(span <= side)
    x1, y1, x2, y2 = boxes[fits[rng.integers(len(fits))]]

    def offset(lo_face, hi_face, extent):
        lo, hi = math.ceil(hi_face - side + 1), math.floor(lo_face)  # offsets keeping the face inside
        if side <= extent:  # and the crop inside the frame
            lo, hi = max(lo, 0), min(hi, extent - side)
        return int(rng.integers(lo, hi + 1)) if hi >= lo else int(lo)

    return offset(x1, x2, width), offset(y1, y2, height), side


def crop_image(img: np.ndarray, x0: int, y0: int, side: int, fill=MEAN_RGB) -> np.ndarray:
    """Pixels of the square window; parts outside the frame are filled with `fill` (the mean: zero input)."""
    H, W = img.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + side <= W and y0 + side <= H:
        return img[y0:y0 + side, x0:x0 + side]
    out = np.empty((side, side, img.shape[2]), img.dtype)
    out[:] = np.asarray(fill, dtype=img.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, W), min(y0 + side, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


# ---------------------------------------------------------------- photometric (0-255 pixels)


def photometric(img: np.ndarray, rng: np.random.Generator, brightness: float = 32.0,
                contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue: float = 18.0) -> np.ndarray:
    """RetinaFace-style colour distortion of a uint8 RGB image; each op applied with probability 1/2.

    Brightness adds up to +-32 levels, contrast and saturation scale by 0.5-1.5, hue shifts up to +-18 of
    OpenCV's 180 hue steps; contrast goes before or after the HSV ops at random. Every op is a per-channel
    lookup table on uint8 (the values are clipped to 0-255 between ops, as uint8 pixels would be).
    """
    draws = rng.random(6)
    b = rng.uniform(-brightness, brightness)
    c = rng.uniform(*contrast)
    s = rng.uniform(*saturation)
    h = rng.uniform(-hue, hue)
    levels = np.arange(256, dtype=np.float32)
    contrast_first = draws[1] < 0.5
    lut = levels + b if draws[0] < 0.5 else levels
    if contrast_first and draws[2] < 0.5:
        lut = lut * c
    out = img
    if draws[0] < 0.5 or (contrast_first and draws[2] < 0.5):
        out = cv2.LUT(img, _u8(lut))
    if draws[3] < 0.5 or draws[4] < 0.5:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        if draws[4] < 0.5:  # hue is circular: 0..179
            hsv[..., 0] = cv2.LUT(hsv[..., 0], _u8(np.mod(np.round(levels + h), 180)))
        if draws[3] < 0.5:
            hsv[..., 1] = cv2.LUT(hsv[..., 1], _u8(levels * s))
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and draws[5] < 0.5:
        out = cv2.LUT(out, _u8(levels * c))
    return out if out is not img else img.copy()


def _u8(lut: np.ndarray) -> np.ndarray:
    return np.clip(np.round(lut), 0, 255).astype(np.uint8)


def _still_in_frame(f: dict) -> bool:
    """A rotated face is usable when its box is finite and at least half of its landmarks stayed in the frame."""
    if not np.isfinite(f["bbox"]).all():
        return False
    if f.get("landmarks") is None:
        return True
    lm = np.asarray(f["landmarks"], np.float64).reshape(-1, 2)
    return T.in_frame(lm, int(f["width"]), int(f["height"])).mean() >= 0.5


# ---------------------------------------------------------------- the training transform


class Augment:
    """Callable (img uint8 (H, W, 3) RGB, faces rows, rng) -> (img (S, S, 3) uint8, faces rows, meta).

    `rotate_prob` / `rotate_max` enable online in-plane rotations (degrees, uniform in +-rotate_max) through
    `hpe_data.transforms.rotate_row/rotate_image` with a constant (black) border, so no mirrored copy of a face
    appears unlabelled; an image whose rotation would push a face out of the frame (non-finite box, or fewer
    than half of its landmarks left inside) is not rotated. `flip_prob` mirrors through
    `flip_row/flip_image` (pose conjugated, landmarks swapped).
    """

    def __init__(self, image_size: int = 256, crop_scales=(0.3, 1.0), flip_prob: float = 0.5,
                 rotate_prob: float = 0.0, rotate_max: float = 0.0, color: bool = True, min_face: float = 2.0,
                 random_interp: bool = True):
        if not 0 < crop_scales[0] <= crop_scales[1] <= 1:
            raise ValueError(f"crop scales must satisfy 0 < lo <= hi <= 1, got {crop_scales}")
        self.image_size = int(image_size)
        self.crop_scales = tuple(crop_scales)
        self.flip_prob = flip_prob
        self.rotate_prob = rotate_prob
        self.rotate_max = rotate_max
        self.color = color
        self.min_face = min_face
        self.random_interp = random_interp

    def __call__(self, img: np.ndarray, faces: list[dict], rng: np.random.Generator):
        # draw every random number up front, in a fixed order: the sample stays a function of the rng seed
        u = rng.random(3)
        theta = rng.uniform(-self.rotate_max, self.rotate_max)
        interp = INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))] if self.random_interp else cv2.INTER_LINEAR
        crop_rng, color_rng = rng.spawn(2)
        meta = {"rotate_deg": 0.0, "flipped": False}

        if self.rotate_prob > 0 and u[0] < self.rotate_prob and theta != 0:
            c = T.rotation_center(faces)
            turned = [T.rotate_row(f, theta, c) for f in faces]
            if all(_still_in_frame(f) for f in turned):  # else this image is not rotated (see rotate_max doc)
                img = T.rotate_image(img, theta, c, border="constant")
                faces = turned
                meta["rotate_deg"] = float(theta)

        H, W = img.shape[:2]
        x0, y0, side = sample_crop(np.stack([f["bbox"] for f in faces]), W, H, crop_rng, self.crop_scales)
        crop = crop_image(img, x0, y0, side)
        faces = crop_faces(faces, x0, y0, side)
        S = self.image_size
        scale = S / side
        img = cv2.resize(crop, (S, S), interpolation=interp) if side != S else np.ascontiguousarray(crop)
        faces = resize_faces(faces, scale, S, S)
        meta.update(crop=(x0, y0, side), scale=scale)

        if u[1] < self.flip_prob:
            img = T.flip_image(img)
            faces = [T.flip_row(f) for f in faces]
            meta["flipped"] = True
        if self.color:
            img = photometric(img, color_rng)
        faces = [f for f in faces if min(f["bbox"][2] - f["bbox"][0], f["bbox"][3] - f["bbox"][1]) >= self.min_face]
        return img, faces, meta


def letterbox(img: np.ndarray, size: int, fill=MEAN_RGB) -> tuple[np.ndarray, float]:
    """Resize so the long side is `size`, pad right/bottom with the mean to size x size; returns (img, scale).

    A point maps as x' = (x + 0.5) * scale - 0.5, and back as x = (x' + 0.5) / scale - 0.5.
    """
    H, W = img.shape[:2]
    scale = size / max(H, W)
    w, h = max(1, round(W * scale)), max(1, round(H * scale))
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    out[:h, :w] = small
    return out, scale
