"""Landmark back-ends for images without labels: find faces, place 68 iBUG points (0-based pixels).

- `face-alignment` (Bulat's 2D-FAN with the S3FD face detector). It must never download: its weight files are
  looked for in `torch.hub.get_dir()/checkpoints` under the file names the installed package itself would
  download to (read from its `models_urls` tables: `2DFAN4-11f355bf06.pth.tar` and `s3fd-619a316812.pth` in
  face-alignment 1.5), and a missing file raises `LandmarkerUnavailable` naming it and the folder.
  Coordinates are taken as the package returns them (its heatmap decoding subtracts the half pixel of its
  1-based Torch7 origin; the sub-pixel base is *unverified*).
- `dlib` (HOG face detector + the 68-point shape predictor shipped offline by `face-recognition-models`).
  The model file is located with `importlib.util.find_spec`: that package's `__init__` imports
  `pkg_resources`, which may be absent, so it is never imported. dlib's points are integer pixel indices
  (0-based).

`resolve("auto")` picks face-alignment when its weights are present, else dlib. Back-ends are built once per
process (`get`), so forked workers each build their own.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

BACKENDS = ("face-alignment", "dlib")

# What face-alignment 1.5 uses; read from the installed package when it can be imported.
_FA_FALLBACK = {
    "2DFAN-4": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    "s3fd": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}
DLIB_MODEL = "shape_predictor_68_face_landmarks.dat"


class LandmarkerUnavailable(ValueError):
    """A back-end that cannot run here (package or weight files missing); the message says what to install."""


@dataclass
class Face:
    box: np.ndarray  # (4,) detector box x1, y1, x2, y2
    landmarks: np.ndarray  # (68, 2) 0-based pixels
    score: float


# ---------------------------------------------------------------- face-alignment


def fa_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def fa_weight_files() -> dict[str, Path]:
    """{'2DFAN-4': path, 's3fd': path}: where face-alignment would look for (and otherwise download) its weights."""
    urls = dict(_FA_FALLBACK)
    try:
        from face_alignment import api
        from face_alignment.detection.sfd import sfd_detector

        urls["2DFAN-4"] = api.models_urls["2DFAN-4"]
        urls["s3fd"] = sfd_detector.models_urls["s3fd"]
    except (ImportError, KeyError, AttributeError):
        pass
    folder = fa_checkpoint_dir()
    # Both of its download helpers name the cached file by the URL path's last component.
    return {k: folder / os.path.basename(urlparse(u).path) for k, u in urls.items()}


def fa_missing() -> list[Path]:
    return [p for p in fa_weight_files().values() if not p.is_file()]


class FaceAlignmentLandmarker:
    name = "face-alignment"

    def __init__(self, device: str = "cpu"):
        if importlib.util.find_spec("face_alignment") is None:
            raise LandmarkerUnavailable("face-alignment is not installed (pip install face-alignment)")
        missing = fa_missing()
        if missing:
            raise LandmarkerUnavailable(_fa_missing_message(missing))
        import face_alignment

        files = fa_weight_files()
        # The detector is given its file explicitly, and the FAN file exists in the cache folder, so the
        # package finds everything locally and never reaches its download code.
        self.fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, compile=False, face_detector="sfd",
            face_detector_kwargs={"path_to_detector": str(files["s3fd"])})

    def detect(self, img: np.ndarray) -> list[Face]:
        lms, _, boxes = self.fa.get_landmarks_from_image(img, return_bboxes=True)
        if lms is None:
            return []
        return [Face(np.asarray(b[:4], np.float64), np.asarray(lm, np.float64)[:, :2],
                     float(b[4]) if len(b) > 4 else 1.0) for lm, b in zip(lms, boxes)]


def _fa_missing_message(missing: list[Path]) -> str:
    folder = fa_checkpoint_dir()
    names = ", ".join(p.name for p in missing)
    return (f"face-alignment weights missing: {names} not found in {folder} (torch.hub.get_dir()/checkpoints; "
            f"set TORCH_HOME to use another cache). Downloads are disabled: put the files there yourself, "
            f"or use --landmarks dlib")


# ---------------------------------------------------------------- dlib


def dlib_model_path() -> Path:
    """The 68-point predictor file of `face-recognition-models`, found without importing that package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkerUnavailable("face-recognition-models is not installed (it ships the dlib 68-point model)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "models" / DLIB_MODEL
        if p.is_file():
            return p
    raise LandmarkerUnavailable(f"{DLIB_MODEL} not found under {list(spec.submodule_search_locations)}/models")


class DlibLandmarker:
    name = "dlib"

    def __init__(self, upsample: int = 1, min_score: float = 0.5):
        if importlib.util.find_spec("dlib") is None:
            raise LandmarkerUnavailable("dlib is not installed (pip install dlib-bin)")
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_path()))
        self.upsample, self.min_score = int(upsample), float(min_score)
        self._rect = dlib.rectangle

    def detect(self, img: np.ndarray) -> list[Face]:
        img = np.ascontiguousarray(img)
        rects, scores, _ = self.detector.run(img, self.upsample, 0.0)
        faces = []
        for r, s in zip(rects, scores):
            if s < self.min_score:  # weak HOG responses are mostly not faces (a patch on a sleeve, ...)
                continue
            shape = self.predictor(img, r)
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            faces.append(Face(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64), pts, float(s)))
        return faces


# ---------------------------------------------------------------- choice


def resolve(name: str) -> str:
    """'auto' -> 'face-alignment' when its weights are present, else 'dlib'."""
    if name == "auto":
        try:
            return "face-alignment" if importlib.util.find_spec("face_alignment") and not fa_missing() else "dlib"
        except ImportError:
            return "dlib"
    if name not in BACKENDS:
        raise ValueError(f"unknown landmark back-end {name!r}; expected auto or one of {BACKENDS}")
    return name


def require(name: str) -> None:
    """Raise LandmarkerUnavailable now (before a run starts) if the back-end cannot be built."""
    name = resolve(name)
    if name == "face-alignment":
        if importlib.util.find_spec("face_alignment") is None:
            raise LandmarkerUnavailable("face-alignment is not installed (pip install face-alignment)")
        missing = fa_missing()
        if missing:
            raise LandmarkerUnavailable(_fa_missing_message(missing))
    else:
        if importlib.util.find_spec("dlib") is None:
            raise LandmarkerUnavailable("dlib is not installed (pip install dlib-bin)")
        dlib_model_path()


_CACHE: dict[tuple, object] = {}


def get(name: str, **kwargs):
    """The back-end object for this process (built on first use)."""
    name = resolve(name)
    key = (os.getpid(), name, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = FaceAlignmentLandmarker(**kwargs) if name == "face-alignment" else DlibLandmarker(**kwargs)
    return _CACHE[key]
