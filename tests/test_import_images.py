"""`images` importer: plain photos, faces and 68 landmarks from a back-end (dlib offline; face-alignment never downloads)."""
from __future__ import annotations

import csv
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import manifests
from cli.data import main as cli
from hpe_data.importers import landmarkers

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def no_fa_weights(tmp_path, monkeypatch):
    """An empty torch hub cache, and a FaceAlignment that fails loudly if anything tries to build it."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    try:
        import face_alignment

        def boom(*a, **k):
            raise AssertionError("FaceAlignment must not be constructed without its weights (it would download)")

        monkeypatch.setattr(face_alignment, "FaceAlignment", boom)
    except ImportError:
        pass
    return home / "hub" / "checkpoints"


def run_cli(*args):
    return CliRunner().invoke(cli, ["import", *map(str, args)], catch_exceptions=False)


def test_astronaut_with_dlib(tmp_path, no_fa_weights):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    img = skimage_data.astronaut()  # 512x512 RGB, one real face
    cv2.imwrite(str(root / "sub" / "astronaut.png"), img[..., ::-1])
    cv2.imwrite(str(root / "blank.jpg"), np.full((120, 160, 3), 128, np.uint8))
    (root / "broken.jpg").write_bytes((root / "blank.jpg").read_bytes()[:200])
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "m.parquet"
    res = run_cli("--dataset", "images", "--root", root, "--out", out)  # auto -> dlib: no face-alignment weights
    assert res.exit_code == 0, res.output
    (r,) = manifests.read_rows(out)
    assert r["sample_id"] == "images/sub/astronaut.png#0" and r["dataset"] == "images"
    assert r["landmarks_source"] == "dlib"
    assert manifests.resolve_image(out, r["image_path"]).resolve() == (root / "sub" / "astronaut.png").resolve()
    assert (r["width"], r["height"]) == (512, 512)
    for k in ("yaw", "pitch", "roll", "rotation", "in_range", "translation", "camera", "landmarks_3d"):
        assert r[k] is None, k
    lm = np.asarray(r["landmarks"], dtype=np.float64).reshape(68, 2)
    eyes, nose, mouth = lm[36:48, 1].mean(), lm[30, 1], lm[48:60, 1].mean()
    assert eyes < nose < mouth
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # subject's right eye on image-left
    # the face of this photo: head in the upper middle, about 90 px wide (from dlib's own box it is 175..265 x 76..166)
    x1, y1, x2, y2 = r["bbox"]
    assert 150 < x1 < 200 and 230 < x2 < 290 and 60 < y1 < 120 and 150 < y2 < 200
    assert (lm[:, 0] >= x1 - 1e-3).all() and (lm[:, 0] <= x2 + 1e-3).all()
    assert np.asarray(r["landmark_visible"]).all()
    with open(str(out) + ".errors.csv") as f:
        errors = {os.path.basename(e["path"]): e["reason"] for e in csv.DictReader(f)}
    assert set(errors) == {"blank.jpg", "broken.jpg"}
    assert "no face" in errors["blank.jpg"] and "truncated" in errors["broken.jpg"]


def test_face_alignment_missing_weights(tmp_path, no_fa_weights):
    pytest.importorskip("face_alignment")
    with pytest.raises(landmarkers.LandmarkerUnavailable) as e:
        landmarkers.require("face-alignment")
    msg = str(e.value)
    assert str(no_fa_weights) in msg
    for name in ("2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"):  # face-alignment 1.5's file names
        assert name in msg
    assert {p.name for p in landmarkers.fa_missing()} == {"2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"}
    assert landmarkers.resolve("auto") == "dlib"
    (tmp_path / "p").mkdir()
    cv2.imwrite(str(tmp_path / "p" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    res = run_cli("--dataset", "images", "--root", tmp_path / "p", "--out", tmp_path / "m.parquet",
                  "--landmarks", "face-alignment")
    assert res.exit_code == 2 and "2DFAN4-11f355bf06.pth.tar" in res.output and "s3fd-619a316812.pth" in res.output
    assert not (tmp_path / "m.parquet").exists()
    assert not any(no_fa_weights.parent.parent.rglob("*.pth*"))  # nothing was fetched


def test_auto_prefers_face_alignment_when_weights_exist(no_fa_weights):
    pytest.importorskip("face_alignment")
    no_fa_weights.mkdir(parents=True)
    for p in landmarkers.fa_weight_files().values():
        p.write_bytes(b"")
    assert landmarkers.fa_missing() == []
    assert landmarkers.resolve("auto") == "face-alignment"


def test_dlib_model_found_offline():
    p = landmarkers.dlib_model_path()
    assert p.name == "shape_predictor_68_face_landmarks.dat" and p.stat().st_size > 1_000_000
