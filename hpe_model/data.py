"""Training data: manifests -> one sample per image (all its faces), a mixing sampler, collate, normalisation.

A sample is a pure function of (seed, epoch, index): its augmentation rng is seeded from those three numbers,
and the sampler's order from (seed, epoch). Resume therefore replays exactly, whatever the worker count.

Face targets per image (tensors): boxes (F, 4) x1y1x2y2 px, landmarks5 (F, 5, 2) + has_landmarks (F,),
rotation (F, 3, 3) + has_pose (F,). A face without pose (rotation null) gets the identity and has_pose=False;
one without landmarks (or with a non-finite five-point landmark) gets zeros and has_landmarks=False.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

import manifests
from hpe_data import landmarks as L
from hpe_data.imageio import ImageError, read_rgb

from .augment import MEAN_RGB, Augment, letterbox

_COLUMNS = ("sample_id", "image_path", "width", "height", "bbox", "landmarks", "landmark_visible", "rotation",
            "camera")


def parse_manifest_arg(text: str) -> tuple[str, float | None]:
    """'path[:weight]' -> (path, weight or None). A suffix that is not a number stays part of the path."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head:
        try:
            w = float(tail)
        except ValueError:
            return str(text), None
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"{text}: manifest weight must be a positive number, got {tail!r}")
        return head, w
    return str(text), None


@dataclass
class Source:
    """One manifest's faces, grouped by image (CSR layout: faces of image i are rows start[i]:start[i+1])."""

    path: Path
    files: list  # resolved image path per image
    start: np.ndarray  # (n_images + 1,)
    width: np.ndarray  # per image
    height: np.ndarray
    bbox: np.ndarray  # (F, 4) float64, face rows sorted by image
    landmarks: np.ndarray  # (F, 136), NaN where null
    visible: np.ndarray  # (F, 68) bool
    rotation: np.ndarray  # (F, 9), NaN where null
    camera: np.ndarray  # (F, 4), NaN where null
    sample_id: list

    def __len__(self) -> int:
        return len(self.files)

    def faces(self, i: int) -> list[dict]:
        """Minimal manifest-style rows for image i (what hpe_data.transforms needs)."""
        out = []
        for k in range(self.start[i], self.start[i + 1]):
            lm = self.landmarks[k]
            R = self.rotation[k]
            cam = self.camera[k]
            out.append({
                "sample_id": self.sample_id[k],
                "width": int(self.width[i]), "height": int(self.height[i]),
                "bbox": self.bbox[k].copy(),
                "landmarks": lm.copy() if np.isfinite(lm).any() else None,
                "landmark_visible": self.visible[k].copy(),
                "rotation": R.copy() if np.isfinite(R).all() else None,
                "camera": cam.copy() if np.isfinite(cam).all() else None,
            })
        return out


def load_source(path: str | os.PathLike) -> Source:
    """Read a manifest and group its faces by image file."""
    path = Path(path)
    table = manifests.read(path)
    if table.num_rows == 0:
        raise manifests.ManifestError(f"{path}: manifest has no rows")

    def arr(name, k, fill=np.nan):
        if name not in table.column_names:
            return np.full((table.num_rows, k), fill)
        return manifests.to_numpy(table, name)

    image_paths = table.column("image_path").to_pylist()
    keys, first, inverse = np.unique(np.asarray(image_paths, dtype=object).astype(str), return_index=True,
                                     return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # faces grouped by image, images in path order
    counts = np.bincount(inverse, minlength=len(keys))
    width = np.asarray(table.column("width").to_pylist(), np.int64)
    height = np.asarray(table.column("height").to_pylist(), np.int64)
    ids = table.column("sample_id").to_pylist()
    ref = first[inverse[order]]  # the first face of each face's image
    bad = np.flatnonzero((width[order] != width[ref]) | (height[order] != height[ref]))
    if bad.size:
        k = order[bad[0]]
        raise manifests.ManifestError(f"{path}: faces of image {image_paths[k]!r} disagree on width/height "
                                      f"(sample_id {ids[k]!r})")
    vis = arr("landmark_visible", 68, False)
    return Source(
        path=path,
        files=[manifests.resolve_image(path, k) for k in keys],
        start=np.concatenate([[0], np.cumsum(counts)]),
        width=width[first], height=height[first],
        bbox=arr("bbox", 4).astype(np.float64)[order],
        landmarks=arr("landmarks", 136).astype(np.float64)[order],
        visible=vis.astype(bool)[order] if vis.dtype == bool else np.ones((table.num_rows, 68), bool)[order],
        rotation=arr("rotation", 9).astype(np.float64)[order],
        camera=arr("camera", 4).astype(np.float64)[order],
        sample_id=[ids[k] for k in order],
    )


def targets_from_faces(faces: list[dict]) -> dict:
    """Face rows (in the pixels of the final image) -> the detector's per-image target tensors."""
    n = len(faces)
    boxes = np.zeros((n, 4), np.float32)
    lm5 = np.zeros((n, 5, 2), np.float32)
    has_lm = np.zeros(n, bool)
    rot = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    has_pose = np.zeros(n, bool)
    for j, f in enumerate(faces):
        boxes[j] = f["bbox"]
        if f.get("landmarks") is not None:
            p = L.five_points(f["landmarks"])
            if np.isfinite(p).all():
                lm5[j], has_lm[j] = p, True
        if f.get("rotation") is not None:
            rot[j], has_pose[j] = np.asarray(f["rotation"]).reshape(3, 3), True
    return {"boxes": torch.from_numpy(boxes), "landmarks5": torch.from_numpy(lm5),
            "has_landmarks": torch.from_numpy(has_lm), "rotation": torch.from_numpy(rot),
            "has_pose": torch.from_numpy(has_pose)}


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


class FaceImages(Dataset):
    """Images of one or more manifests; item (epoch, index) or plain index (epoch from `set_epoch`).

    Returns (image (3, S, S) uint8 tensor, target dict). Normalise on the device with `normalize`.
    """

    def __init__(self, manifest_paths, augment: Augment, seed: int = 0):
        self.sources = [load_source(p) for p in manifest_paths]
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.sources])])
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.sources]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def locate(self, index: int) -> tuple[Source, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range 0..{len(self) - 1}")
        return self.sources[k], int(index - self.offsets[k])

    def raw(self, index: int) -> tuple[np.ndarray, list[dict], Path]:
        """Decoded image and its face rows, checked against the manifest's size."""
        src, i = self.locate(index)
        path = src.files[i]
        try:
            img = read_rgb(path)
        except ImageError as e:
            raise RuntimeError(f"{src.path}: {e}") from None
        if img.shape[1] != src.width[i] or img.shape[0] != src.height[i]:
            raise RuntimeError(f"{src.path}: image {path} is {img.shape[1]}x{img.shape[0]}, "
                               f"the manifest says {src.width[i]}x{src.height[i]}")
        return img, src.faces(i), path

    def sample(self, epoch: int, index: int):
        img, faces, _ = self.raw(index)
        img, faces, meta = self.augment(img, faces, sample_rng(self.seed, epoch, index))
        return img, faces, meta

    def __getitem__(self, item):
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        img, faces, _ = self.sample(epoch, index)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), targets_from_faces(faces)


def collate(batch):
    """Stack images (all the same size), keep targets as a list (variable face counts)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def normalize(images: torch.Tensor, mean=MEAN_RGB) -> torch.Tensor:
    """uint8 (N, 3, H, W) 0-255 -> float32 with the mean subtracted (no scaling, as the reference)."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.float() - m


class MixSampler(Sampler):
    """Deterministic per-epoch order over several manifests, split between DDP ranks.

    Without weights every image appears once per epoch. With weights (`M:w`) manifest k contributes
    round(epoch_size * w_k / sum w) samples (drawn from its shuffled images, cycling when it must repeat);
    `epoch_size` defaults to the total image count. The global order is cut to a multiple of the global batch
    (batch_size * world): global batch j is order[j*B*W:(j+1)*B*W] and rank r takes its r-th slice of B, so a
    DDP run sees the same global batches as one process with batch B*W. Yields (epoch, index) pairs; `start`
    skips this rank's first samples (resume inside an epoch).
    """

    def __init__(self, sizes, weights=None, batch_size: int = 1, seed: int = 0, rank: int = 0, world: int = 1,
                 epoch_size: int | None = None):
        self.sizes = [int(s) for s in sizes]
        self.weights = None if weights is None or all(w is None for w in weights) else \
            [1.0 if w is None else float(w) for w in weights]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch_size = int(epoch_size or sum(self.sizes))
        self.epoch = 0
        self.start = 0
        if self.steps_per_epoch < 1:
            raise ValueError(f"epoch of {self.epoch_size} images is smaller than one global batch "
                             f"({batch_size} x {world} processes)")

    @property
    def steps_per_epoch(self) -> int:
        return self.epoch_size // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def global_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), 0x5A])
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        if self.weights is None:
            order = rng.permutation(offsets[-1])
        else:
            w = np.asarray(self.weights) / sum(self.weights)
            counts = np.floor(w * self.epoch_size).astype(int)
            counts[np.argsort(-(w * self.epoch_size - counts))[: self.epoch_size - counts.sum()]] += 1
            parts = []
            for k, n in enumerate(counts):
                reps = [rng.permutation(self.sizes[k]) for _ in range(-(-n // self.sizes[k]))]
                parts.append(offsets[k] + np.concatenate(reps)[:n] if reps else np.zeros(0, int))
            order = rng.permutation(np.concatenate(parts))
        return order[: self.steps_per_epoch * self.batch_size * self.world]

    def rank_order(self, epoch: int) -> np.ndarray:
        B, W = self.batch_size, self.world
        return self.global_order(epoch).reshape(-1, W, B)[:, self.rank].reshape(-1)

    def __iter__(self):
        for i in self.rank_order(self.epoch)[self.start:]:
            yield self.epoch, int(i)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size - self.start


def worker_init(_):
    torch.set_num_threads(1)  # workers parallelise over images; intra-op threads would only compete


# ---------------------------------------------------------------- validation frames


class Frames(Dataset):
    """Full frames of a manifest for validation: (letterboxed uint8 (3, S, S), scale, ground truth)."""

    def __init__(self, manifest_path, image_size: int):
        self.source = load_source(manifest_path)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        s = self.source
        try:
            img = read_rgb(s.files[i])
        except ImageError as e:
            raise RuntimeError(f"{s.path}: {e}") from None
        if img.shape[1] != s.width[i] or img.shape[0] != s.height[i]:
            raise RuntimeError(f"{s.path}: image {s.files[i]} is {img.shape[1]}x{img.shape[0]}, "
                               f"the manifest says {s.width[i]}x{s.height[i]}")
        small, scale = letterbox(img, self.image_size)
        a, b = s.start[i], s.start[i + 1]
        gt = {"boxes": s.bbox[a:b], "rotation": s.rotation[a:b].reshape(-1, 3, 3)}
        return torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))), scale, gt


def collate_frames(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]
