"""Inference API: `load(checkpoint) -> Predictor`; whole images in, every face with its pose out.

    import hpe_model
    p = hpe_model.load("runs/x/best.pt")
    faces = p.predict("photo.jpg")          # [{"box", "score", "landmarks5", "rotation", "yaw", "pitch", "roll"}]
    arrays = p.predict_arrays([img1, img2])  # [{"boxes" (K,4), "scores", "rotation" (K,3,3), "landmarks5"}]

Images are RGB uint8 (H, W, 3) arrays or file paths. Each image is letterboxed (long side -> `input_size`,
padded right/bottom with the training mean) so that faces appear at the scale the network was trained on;
results are mapped back to the pixels of the image passed in.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hpe_data import pose
from hpe_data.imageio import read_rgb

from . import checkpoint as ckpt
from .augment import MEAN_RGB, letterbox
from .data import normalize
from .detector import RetinaPose


def build_model(config: dict, pretrained=None) -> RetinaPose:
    return RetinaPose(backbone=config["backbone"], pose_head=config.get("pose_head", True), pretrained=pretrained)


class Predictor:
    """A RetinaPose model plus its preprocessing; thread-compatible, no state between calls."""

    def __init__(self, model: RetinaPose, input_size: int | None = 640, mean=MEAN_RGB, device="cpu",
                 score_thresh: float = 0.5, nms_thresh: float = 0.4, batch_size: int = 8):
        self.model = model.to(device).eval()
        self.input_size = input_size
        self.mean = tuple(mean)
        self.device = torch.device(device)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.batch_size = batch_size

    def _prepare(self, img) -> tuple[np.ndarray, float]:
        if isinstance(img, (str, os.PathLike)):
            img = read_rgb(img)
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {img.dtype} {img.shape}")
        if self.input_size:
            return letterbox(img, self.input_size, self.mean)
        H, W = img.shape[:2]  # native size, padded to a multiple of the coarsest stride
        h, w = -(-H // 32) * 32, -(-W // 32) * 32
        out = np.empty((h, w, 3), np.uint8)
        out[:] = np.asarray(self.mean, np.uint8)
        out[:H, :W] = img
        return out, 1.0

    @torch.no_grad()
    def predict_arrays(self, images) -> list[dict]:
        """Per image: boxes (K, 4) x1y1x2y2, scores (K,), rotation (K, 3, 3) R_cv, landmarks5 (K, 5, 2),
        yaw/pitch/roll (K,) degrees -- numpy, in the input image's pixels, sorted by score."""
        if isinstance(images, np.ndarray) and images.ndim == 3 or isinstance(images, (str, os.PathLike)):
            images = [images]
        out = []
        for s in range(0, len(images), self.batch_size):
            prepared = [self._prepare(im) for im in images[s:s + self.batch_size]]
            shapes = {p.shape for p, _ in prepared}
            groups = [prepared] if len(shapes) == 1 else [[p] for p in prepared]  # native sizes may differ
            for g in groups:
                x = torch.from_numpy(np.stack([p.transpose(2, 0, 1) for p, _ in g])).to(self.device)
                dets = self.model.detect(self.model(normalize(x, self.mean)), score_thresh=self.score_thresh,
                                         nms_thresh=self.nms_thresh)
                out += [_to_numpy(d, scale) for d, (_, scale) in zip(dets, g)]
        return out

    def predict(self, image_or_batch):
        """One image -> list of face dicts; a list/batch of images -> one such list per image."""
        single = isinstance(image_or_batch, (str, os.PathLike)) or \
            (isinstance(image_or_batch, np.ndarray) and image_or_batch.ndim == 3)
        res = [_faces(d) for d in self.predict_arrays(image_or_batch)]
        return res[0] if single else res


def _to_numpy(d: dict, scale: float) -> dict:
    k = d["boxes"].shape[0]
    boxes = d["boxes"].float().cpu().numpy().astype(np.float64)
    lm = d["landmarks5"].float().cpu().numpy().astype(np.float64)
    R = d["rotation"].float().cpu().numpy().astype(np.float64) if "rotation" in d else np.full((k, 3, 3), np.nan)
    p, y, r = pose.to_euler(R)
    return {"boxes": (boxes + 0.5) / scale - 0.5, "scores": d["scores"].float().cpu().numpy().astype(np.float64),
            "landmarks5": (lm + 0.5) / scale - 0.5, "rotation": R,
            "yaw": np.asarray(y), "pitch": np.asarray(p), "roll": np.asarray(r)}


def _faces(a: dict) -> list[dict]:
    return [{"box": a["boxes"][i], "score": float(a["scores"][i]), "landmarks5": a["landmarks5"][i],
             "rotation": a["rotation"][i], "yaw": float(a["yaw"][i]), "pitch": float(a["pitch"][i]),
             "roll": float(a["roll"][i])} for i in range(len(a["scores"]))]


def load(checkpoint: str | os.PathLike, device="cpu", **options) -> Predictor:
    """Predictor from an hpe-train checkpoint (`last.pt` / `best.pt`). `options` go to `Predictor`
    (input_size defaults to the checkpoint's inference size, score_thresh, nms_thresh, batch_size)."""
    state = ckpt.load(checkpoint, map_location="cpu")
    cfg = state["config"]
    model = build_model(cfg)
    try:
        model.load_state_dict(state.get("ema") or state["model"])  # the moving average when training kept one
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{Path(checkpoint)}: weights do not fit a {cfg['backbone']} RetinaPose ({e})") \
            from None
    options.setdefault("input_size", cfg.get("infer_size", cfg.get("image_size")))
    options.setdefault("mean", tuple(cfg.get("pixel_mean", MEAN_RGB)))
    return Predictor(model, device=device, **options)
