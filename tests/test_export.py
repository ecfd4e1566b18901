"""ONNX export: closed-form checks of the in-graph decode, parity with PyTorch under onnxruntime, NMS, CLI."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hpe_data import pose  # noqa: E402
from hpe_model import checkpoint, postprocess  # noqa: E402
from hpe_model.anchors import AnchorGenerator  # noqa: E402
from hpe_model.api import Predictor  # noqa: E402
from hpe_model.augment import MEAN_RGB  # noqa: E402
from hpe_model.data import normalize  # noqa: E402
from hpe_model.export import (ExportError, OnnxPredictor, bench_predict, export_onnx, grid_anchors, nms,  # noqa: E402
                              random_model)

SIZE = 256


def wrapped(a, b):
    """|a - b| in degrees modulo 360 (+-180 is one angle)."""
    return np.abs((np.asarray(a, np.float64) - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small inputs: one intra-op thread is as fast and does not stall when other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return random_model("mobilenet", seed=0)


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", SIZE, dynamic=True, dynamic_size=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two synthetic AFLW2000-format heads (450x450), cut to different shapes so letterboxing pads, and shrunk
    (keeps the native-size runs fast)."""
    import cv2

    from hpe_data.imageio import read_rgb
    from hpe_data.synth import synth

    out = tmp_path_factory.mktemp("synth")
    synth("aflw2000", out, 2, seed=3, progress=False)
    a, b = (read_rgb(p) for p in sorted(out.glob("AFLW2000/*.jpg")))
    return [cv2.resize(a[:330], (270, 198), interpolation=cv2.INTER_AREA),
            cv2.resize(b[:, 60:400], (204, 270), interpolation=cv2.INTER_AREA)]


def test_grid_anchors_equal_the_generator():
    gen = AnchorGenerator()
    for hw in [(640, 640), (256, 256), (75, 333), (200, 256)]:
        got = grid_anchors(torch.zeros((1, 3) + hw), gen)
        assert torch.equal(got, gen(hw)), hw
    # counts from the RetinaFace layout facts
    assert len(grid_anchors(torch.zeros(1, 3, 640, 640), gen)) == 16800
    assert len(grid_anchors(torch.zeros(1, 3, 256, 256), gen)) == 2688


def test_graph_contents_and_checker(onnx_path):
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in proto.graph.output] == ["scores", "boxes", "landmarks5", "rotation", "yaw", "pitch", "roll"]
    ops = {n.op_type for n in proto.graph.node}
    assert {"Atan", "Sqrt", "Exp", "Softmax"} <= ops  # Euler, Gram-Schmidt, box decode, scores are in-graph
    assert not ops & {"NonMaxSuppression", "TopK"}  # NMS is the documented post-step


def test_decode_in_graph_closed_form(tmp_path):
    """Heads with zero weights and chosen biases: every anchor must decode to known values."""
    m = random_model("mobilenet", seed=1)
    p, y, r = 20.0, -35.0, 10.0
    with torch.no_grad():
        for head in (m.cls_head, m.box_head, m.lmk_head, m.pose_head):
            for c in head.convs:
                c.weight.zero_()
                c.bias.zero_()
        six = pose.matrix_to_rot6d(pose.to_matrix(p, y, r))
        for c in m.pose_head.convs:
            c.bias.copy_(torch.as_tensor(six, dtype=torch.float32).repeat(2))
            c.bias[:6] *= 3.0  # Gram-Schmidt must normalise
        for c in m.cls_head.convs:
            c.bias.copy_(torch.tensor([0.0, math.log(3.0)] * 2))  # softmax -> 0.75
    path = export_onnx(m, tmp_path / "c.onnx", 128)
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 128, 128), dtype=np.uint8)
    out = OnnxPredictor(path).raw(x)
    anchors = AnchorGenerator()((128, 128)).numpy()
    half = anchors[:, 2:] / 2
    np.testing.assert_allclose(out["scores"][0], 0.75, atol=1e-6)
    np.testing.assert_allclose(out["boxes"][0], np.hstack([anchors[:, :2] - half, anchors[:, :2] + half]), atol=1e-4)
    np.testing.assert_allclose(out["landmarks5"][0], np.repeat(anchors[:, None, :2], 5, 1), atol=1e-4)
    np.testing.assert_allclose(out["rotation"][0], np.broadcast_to(pose.to_matrix(p, y, r), (len(anchors), 3, 3)),
                               atol=1e-5)
    for name, v in (("pitch", p), ("yaw", y), ("roll", r)):
        np.testing.assert_allclose(out[name][0], v, atol=1e-3)


def test_parity_per_anchor(model, onnx_path, images):
    """All anchors of two letterboxed synthetic images: onnxruntime vs the PyTorch reference decode."""
    ref_p = Predictor(model, input_size=SIZE)
    x = np.stack([ref_p._prepare(im)[0].transpose(2, 0, 1) for im in images])
    got = OnnxPredictor(onnx_path).raw(x)
    with torch.no_grad():
        out = model(normalize(torch.from_numpy(x), MEAN_RGB))
        ref = {k: v.numpy() for k, v in postprocess.decode(out, out["anchors"]).items()}
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
    keep = ref["scores"] > 0.3
    assert keep.sum() > 100  # a meaningful comparison
    assert np.abs(got["boxes"] - ref["boxes"])[keep].max() < 0.5
    assert np.abs(got["landmarks5"] - ref["landmarks5"])[keep].max() < 0.5
    pitch, yaw, roll = pose.to_euler(ref["rotation"].astype(np.float64))
    assert np.ptp(yaw[keep]) > 60  # the random pose head really varies the pose
    for name, v in (("pitch", pitch), ("yaw", yaw), ("roll", roll)):
        assert wrapped(got[name][keep], v[keep]).max() < 0.1, name


def _match(a: dict, b: dict):
    """Each detection of `a` has one in `b` with boxes within 0.5 px and angles within 0.1 deg."""
    assert len(a["scores"]) == len(b["scores"]) > 0
    used = set()
    for i in range(len(a["scores"])):
        d = np.abs(b["boxes"] - a["boxes"][i]).max(1)
        j = int(d.argmin())
        assert d[j] < 0.5 and j not in used
        used.add(j)
        assert abs(a["scores"][i] - b["scores"][j]) < 1e-4
        np.testing.assert_array_less(np.abs(a["landmarks5"][i] - b["landmarks5"][j]), 0.5)
        for k in ("yaw", "pitch", "roll"):
            assert wrapped(a[k][i], b[k][j]) < 0.1, k


def test_parity_final_detections(model, onnx_path, images):
    """Same images through both predictors (letterboxed and native size): the same faces after NMS.
    Threshold 0.8: at lower ones the random model's dense overlapping boxes make greedy NMS flip on 1e-4 px."""
    for size in (SIZE, None):
        a = Predictor(model, input_size=size, score_thresh=0.8).predict_arrays(images)
        b = OnnxPredictor(onnx_path, input_size=size, score_thresh=0.8, batch_size=2).predict_arrays(images)
        for da, db in zip(a, b):
            _match(da, db)
    faces = OnnxPredictor(onnx_path, score_thresh=0.8).predict(images[0])
    assert set(faces[0]) == {"box", "score", "landmarks5", "rotation", "yaw", "pitch", "roll"}


def test_static_export(model, images, tmp_path):
    path = export_onnx(model, tmp_path / "s.onnx", 192)
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 192, 192]
    p = OnnxPredictor(path, score_thresh=0.8)
    _match(Predictor(model, input_size=192, score_thresh=0.8).predict_arrays(images)[1], p.predict_arrays(images)[1])
    with pytest.raises(ExportError, match="dynamic-size"):
        OnnxPredictor(path, input_size=256)


def test_predictor_defaults_match_torch():
    tp = inspect.signature(Predictor).parameters
    op = inspect.signature(OnnxPredictor).parameters
    for k in ("score_thresh", "nms_thresh", "batch_size"):
        assert op[k].default == tp[k].default, k
    dp = inspect.signature(postprocess.detect).parameters
    from hpe_model import export

    assert (export.PRE_NMS_TOP_N, export.KEEP) == (dp["pre_nms_top_n"].default, dp["keep"].default)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.floats(0.1, 0.9), st.integers(0, 2**31 - 1))
def test_nms_equals_torchvision(n, thresh, seed):
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.hstack([xy, xy + rng.uniform(1, 40, (n, 2))]).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n + 0.01  # distinct
    ref = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, thresh), ref)


def test_bad_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="bad.onnx"):
        OnnxPredictor(bad)


def test_bench_predict_smoke():
    res = bench_predict(sizes=(64,), batch_sizes=(1, 2), repeats=1, image_shape=(48, 64))
    assert {"predict_torch_64_b1_img_per_s", "predict_onnx_64_b2_img_per_s", "predict_onnx_over_torch_64_b2"} <= set(res)
    assert all(v > 0 for v in res.values())


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return checkpoint.save({"config": {**model.config, "infer_size": 128}, "model": model.state_dict()},
                           tmp_path_factory.mktemp("ck") / "best.pt")


def test_cli_export(ckpt, tmp_path):
    from cli.eval import main

    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--dynamic"])
    assert res.exit_code == 0, res.output
    assert "onnx.checker passed" in res.output and "max |onnx - torch|" in res.output
    p = OnnxPredictor(out)
    assert p.model_size == 128 and p.dynamic_batch and not p.dynamic_size


def test_cli_export_refuses_bad_checkpoints(ckpt, tmp_path):
    from cli.eval import main

    broken = tmp_path / "broken.pt"
    broken.write_bytes(Path(ckpt).read_bytes()[:1000])
    state = torch.load(ckpt, weights_only=True)
    state["schema_version"] = 99
    old = tmp_path / "old.pt"
    torch.save(state, old)
    for path, reason in ((broken, "not a readable checkpoint"), (old, "schema version 99")):
        res = CliRunner().invoke(main, ["export", "--checkpoint", str(path), "--out", str(tmp_path / "x.onnx")])
        assert res.exit_code != 0
        assert str(path) in res.output and reason in res.output, res.output
        assert not (tmp_path / "x.onnx").exists()
