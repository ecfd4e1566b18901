"""`hpe-eval predict`: images, folders and videos in; annotated outputs, detections.json, Parquet, errors.csv."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from cli.eval import main
from hpe_data import pose
from hpe_data.imageio import read_rgb
from hpe_model import checkpoint
from hpe_model.api import load
from hpe_model.export import random_model
from hpe_model.video import VideoFrames, annotate, collect

THRESH = 0.8
SIZE = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    m = random_model("mobilenet", seed=0)
    return checkpoint.save({"config": {**m.config, "infer_size": SIZE}, "model": m.state_dict()},
                           tmp_path_factory.mktemp("ck") / "best.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder with 2 synthetic head images (one in a subfolder), a broken .jpg, a 6-frame mp4v video."""
    from hpe_data.synth import synth

    root = tmp_path_factory.mktemp("in")
    synth("aflw2000", root / "syn", 2, seed=5, progress=False)
    a, b = (read_rgb(p) for p in sorted((root / "syn").glob("AFLW2000/*.jpg")))
    d = root / "photos"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "a.jpg"), cv2.cvtColor(a[50:350, 20:420], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "sub" / "b.png"), cv2.cvtColor(b[:, 100:350], cv2.COLOR_RGB2BGR))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (d / "notes.txt").write_text("ignored")
    video = root / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for k in range(6):  # the head slides right by 8 px per frame
        frame = np.full((120, 160, 3), 90, np.uint8)
        frame[:, 8 * k: 8 * k + 112] = cv2.resize(a[60:400, 60:400], (112, 120))
        w.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    w.release()
    return {"folder": d, "video": video, "a": d / "a.jpg", "b": d / "sub" / "b.png", "broken": d / "broken.jpg"}


def _errors(out: Path) -> list[dict]:
    with open(out / "errors.csv", newline="") as f:
        return list(csv.DictReader(f))


def _frames(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def run_out(ckpt, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), str(inputs["folder"]), str(inputs["video"]),
                                    str(inputs["folder"] / "missing.jpg"), "--out", str(out), "--batch-size", "4",
                                    "--score-thresh", str(THRESH), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_images_annotated_and_json_equal_predictor(ckpt, inputs, run_out):
    out, text = run_out
    assert "2 image(s), 1 video(s) (6 frames)" in text
    doc = json.loads((out / "detections.json").read_text())
    ref = load(ckpt, score_thresh=THRESH)
    by_path = {r["path"]: r for r in doc["images"]}
    assert set(by_path) == {str(inputs["a"]), str(inputs["b"])}
    total = 0
    for key in ("a", "b"):
        rec = by_path[str(inputs[key])]
        img = read_rgb(inputs[key])
        faces = ref.predict(img)
        assert len(rec["faces"]) == len(faces) > 0
        total += len(faces)
        for got, want in zip(rec["faces"], faces):
            np.testing.assert_allclose(got["box"], want["box"], atol=1e-3)
            np.testing.assert_allclose(got["landmarks5"], want["landmarks5"], atol=1e-3)
            np.testing.assert_allclose(got["rotation"], np.asarray(want["rotation"]).reshape(9), atol=1e-5)
            assert abs(got["score"] - want["score"]) < 1e-5
            p, y, r = pose.to_euler(np.asarray(got["rotation"]).reshape(3, 3))  # angles agree with the matrix
            assert abs(got["yaw"] - y) < 1e-3 and abs(got["pitch"] - p) < 1e-3 and abs(got["roll"] - r) < 1e-3
        drawn = read_rgb(out / rec["annotated"])
        assert drawn.shape == img.shape
        # boxes are drawn in the box colour where the detections are
        assert (np.abs(drawn.astype(int) - img).sum(-1) > 60).mean() > 0.001
    assert Path(by_path[str(inputs["b"])]["annotated"]).parts[-2:] == ("sub", "b.png")


def test_errors_reported_and_rest_processed(inputs, run_out):
    out, _ = run_out
    errs = {e["path"]: e["reason"] for e in _errors(out)}
    assert set(errs) == {str(inputs["broken"]), str(inputs["folder"] / "missing.jpg")}
    assert "unreadable" in errs[str(inputs["broken"])]
    assert "no such file" in errs[str(inputs["folder"] / "missing.jpg")]


def test_video_outputs_equal_predictor(ckpt, inputs, run_out):
    out, _ = run_out
    doc = json.loads((out / "detections.json").read_text())
    (rec,) = doc["videos"]
    assert rec["frames"] == 6 and rec["path"] == str(inputs["video"])
    table = pq.read_table(out / rec["parquet"])
    assert table.column_names[:11] == ["frame", "time_s", "face", "x1", "y1", "x2", "y2", "score", "yaw", "pitch",
                                       "roll"]
    frames = _frames(inputs["video"])
    assert len(frames) == 6
    dets = load(ckpt, score_thresh=THRESH).predict_arrays(frames)
    n = [len(d["scores"]) for d in dets]
    assert table.num_rows == sum(n) == rec["detections"] > 0  # one row per detection
    rows = table.to_pylist()
    k = 0
    for f, d in enumerate(dets):
        for i in range(n[f]):
            r = rows[k]
            k += 1
            assert (r["frame"], r["face"]) == (f, i)
            np.testing.assert_allclose([r["x1"], r["y1"], r["x2"], r["y2"]], d["boxes"][i], atol=1e-3)
            np.testing.assert_allclose(r["rotation"], d["rotation"][i].reshape(9), atol=1e-5)
            np.testing.assert_allclose([r["yaw"], r["pitch"], r["roll"]], [d["yaw"][i], d["pitch"][i], d["roll"][i]],
                                       atol=1e-3)
            assert abs(r["score"] - d["scores"][i]) < 1e-5
    np.testing.assert_allclose(table.column("time_s").to_numpy(), table.column("frame").to_numpy() / 10.0,
                               atol=1e-3)  # 10 fps
    annotated = _frames(out / rec["annotated"])
    assert len(annotated) == 6 and annotated[0].shape == (120, 160, 3)


def test_corrupt_video_frame_is_skipped_and_reported(ckpt, tmp_path):
    """MJPG AVI with the JPEG of frame 3 overwritten: frames 0-2 and 4-5 are processed, frame 3 reported."""
    src = tmp_path / "in" / "clip.avi"
    src.parent.mkdir()
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(6):
        w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    w.release()
    data = bytearray(src.read_bytes())
    soi = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(soi) == 6
    data[soi[3]:soi[4] - 8] = bytes(soi[4] - 8 - soi[3])  # the JPEG of frame 3, not the next chunk header
    src.write_bytes(bytes(data))
    frames = VideoFrames(src)
    assert [i for i, _, _ in frames] == [0, 1, 2, 4, 5]
    assert frames.bad == [3]

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), str(src), "--out", str(out),
                                    "--score-thresh", "0.5"])
    assert res.exit_code == 0, res.output
    (err,) = _errors(out)
    assert err["path"] == str(src) and "frame 3 " in err["reason"]
    (rec,) = json.loads((out / "detections.json").read_text())["videos"]
    assert rec["frames"] == 5 and rec["bad_frames"] == 1
    assert set(pq.read_table(out / rec["parquet"]).column("frame").to_pylist()) <= {0, 1, 2, 4, 5}


def test_unopenable_video_and_strict(ckpt, inputs, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 500)
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(ckpt), str(bad), str(inputs["a"]), "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (err,) = _errors(out)
    assert err["path"] == str(bad) and "cannot open as a video" in err["reason"]
    assert len(json.loads((out / "detections.json").read_text())["images"]) == 1
    res = CliRunner().invoke(main, args + ["--strict"])
    assert res.exit_code != 0 and "--strict" in res.output
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), str(bad), "--out", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "no input could be processed" in res.output


def test_bad_checkpoints_are_refused(ckpt, inputs, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(Path(ckpt).read_bytes()[:2000])
    state = torch.load(ckpt, weights_only=True)
    state["schema_version"] = 2
    newer = tmp_path / "newer.pt"
    torch.save(state, newer)
    for path, reason in ((broken, "not a readable checkpoint"), (newer, "schema version 2")):
        for backend in ("torch", "onnx"):
            out = tmp_path / f"out-{path.stem}-{backend}"
            res = CliRunner().invoke(main, ["predict", "--checkpoint", str(path), str(inputs["a"]), "--out", str(out),
                                            "--backend", backend])
            assert res.exit_code != 0
            assert str(path) in res.output and reason in res.output, res.output
            assert not (out / "detections.json").exists()


def test_onnx_backend_matches_torch(ckpt, inputs, run_out, tmp_path):
    out = tmp_path / "onnx"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), str(inputs["a"]), str(inputs["b"]),
                                    "--out", str(out), "--backend", "onnx", "--score-thresh", str(THRESH),
                                    "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    got = {r["path"]: r["faces"] for r in json.loads((out / "detections.json").read_text())["images"]}
    want = {r["path"]: r["faces"] for r in json.loads((run_out[0] / "detections.json").read_text())["images"]}
    for path, faces in want.items():
        assert len(got[path]) == len(faces)
        for g in got[path]:
            j = int(np.argmin([np.abs(np.subtract(g["box"], w["box"])).max() for w in faces]))
            np.testing.assert_allclose(g["box"], faces[j]["box"], atol=0.5)
            for k in ("yaw", "pitch", "roll"):
                assert abs((g[k] - faces[j][k] + 180) % 360 - 180) < 0.1


def test_collect(tmp_path):
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "1.JPG").write_bytes(b"")
    (tmp_path / "d" / "2.png").write_bytes(b"")
    (tmp_path / "d" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "d" / "m.MP4").write_bytes(b"")
    (tmp_path / "d" / "readme.md").write_bytes(b"")
    (tmp_path / "e").mkdir()
    (tmp_path / "2.png").write_bytes(b"")
    found = collect([tmp_path / "d", tmp_path / "2.png", tmp_path / "e", tmp_path / "nope.jpg"])
    assert [(s.name, n.as_posix()) for s, n in found.images] == [("2.png", "d/2.png"), ("1.JPG", "d/x/1.JPG"),
                                                                  ("2.png", "2.png")]
    assert [n.as_posix() for _, n in found.videos] == ["d/m.MP4"]
    assert {Path(p).name for p, _ in found.errors} == {"e", "nope.jpg"}


def test_annotate_draws_the_face_direction_along_the_nose():
    """Yaw +60 turns the nose to image-left (conventions §1): the blue face axis must be drawn left of the nose."""
    img = np.zeros((200, 200, 3), np.uint8)
    det = {"boxes": np.array([[50.0, 50, 150, 150]]), "scores": np.array([0.9]),
           "landmarks5": np.array([[[80.0, 90], [120, 90], [100, 110], [85, 130], [115, 130]]]),
           "rotation": pose.to_matrix(0.0, 60.0, 0.0)[None], "yaw": np.array([60.0]), "pitch": np.array([0.0]),
           "roll": np.array([0.0])}
    out = annotate(img, det).astype(int)
    blue = (out[..., 2] > 200) & (out[..., 0] < 100) & (out[..., 1] < 150)
    ys, xs = np.nonzero(blue)
    assert len(xs) > 10 and xs.mean() < 100 and np.abs(ys - 110).max() < 8
    assert img.sum() == 0  # the input is left untouched
