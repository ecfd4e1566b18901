"""Training loop: the loss falls, DDP equals one process, exact resume, checkpoints, schedule, CLI, load API.

Small on purpose: 96-pixel toy images (see test_data_pipeline), MobileNet-0.25, a few steps each.
"""
from __future__ import annotations

import csv
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from hpe_data import pose
from hpe_model import checkpoint as ckpt
from hpe_model.api import load
from hpe_model.schedule import Schedule
from hpe_model.train import Dist, TrainConfig, train
from test_data_pipeline import write_toy_set


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toytrain")
    return (write_toy_set(d, n_images=8, size=(96, 96), seed=1),
            write_toy_set(d, n_images=3, size=(96, 96), seed=2, name="val.parquet"))


def config(train_manifest, out, **kw) -> TrainConfig:
    base = dict(manifests=[str(train_manifest)], out=str(out), epochs=1, batch_size=4, image_size=96, workers=0,
                progress=False, seed=3)
    return TrainConfig(**{**base, **kw})


def weights(path, part="model") -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)[part]


# ---------------------------------------------------------------- learning


def test_loss_falls_within_30_steps(toy, tmp_path):
    losses = []
    train(config(toy[0], tmp_path, epochs=15, lr=0.01),
          hooks={"after_step": lambda step, info: losses.append(info["loss"]["total"])})
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)


# ---------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(cfg, dist_info=Dist(rank, world, rank))


def test_two_process_ddp_equals_one_process_with_the_global_batch(toy, tmp_path):
    # float64: the claim is algorithmic equality; in float32 the BatchNorm weight gradients of the first layers
    # (large sums that nearly cancel) differ by rounding alone at the 1e-2 relative level
    steps = dict(epochs=1, max_steps=2, lr=0.05, warmup_steps=0, dtype="float64")
    single = train(config(toy[0], tmp_path / "one", batch_size=4, **steps))
    mp.spawn(_ddp_worker, args=(2, _free_port(), config(toy[0], tmp_path / "ddp", batch_size=2, **steps)),
             nprocs=2, join=True)
    assert single["step"] == 2
    a, b = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "ddp" / "last.pt")
    assert a.keys() == b.keys()
    init = initial_weights()
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert moved > 1e-3  # the two steps really changed the weights
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=0), k


def initial_weights() -> dict:
    from hpe_model.api import build_model

    torch.manual_seed(3)  # the seed `config` gives train()
    return build_model({"backbone": "mobilenet"}).state_dict()


# ---------------------------------------------------------------- resume


class Killed(Exception):
    pass


def _kill_at(k):
    def hook(step, info):
        if step == k:
            raise Killed
    return hook


def test_resume_after_a_kill_ends_with_the_same_weights(toy, tmp_path):
    kw = dict(epochs=2, batch_size=2, save_every=3, val_manifest=str(toy[1]), lr=0.02)
    full = train(config(toy[0], tmp_path / "full", **kw))
    assert full["step"] == 8
    with pytest.raises(Killed):  # killed at step 7: last.pt holds step 6, inside the second epoch
        train(config(toy[0], tmp_path / "cut", **kw), hooks={"after_step": _kill_at(7)})
    state = ckpt.load(tmp_path / "cut" / "last.pt")
    assert (state["step"], state["epoch"], state["epoch_step"]) == (6, 1, 2)
    resumed = train(config(toy[0], tmp_path / "cut", resume=True, workers=2, **kw))  # workers do not matter
    assert resumed["step"] == 8
    for part in ("model", "ema"):
        a, b = weights(tmp_path / "full" / "last.pt", part), weights(tmp_path / "cut" / "last.pt", part)
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    rows, ref = metrics(tmp_path / "cut"), metrics(tmp_path / "full")
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "4"), ("2", "8")]  # no epoch lost or repeated
    assert rows == ref  # same losses and validation as the uninterrupted run
    assert (tmp_path / "cut" / "best.pt").is_file()


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]


def test_resume_refuses_changed_settings(toy, tmp_path):
    train(config(toy[0], tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="lr"):
        train(config(toy[0], tmp_path, max_steps=1, resume=True, lr=0.5))


# ---------------------------------------------------------------- checkpoints and the load API


def test_checkpoint_is_weights_only_and_carries_the_config(toy, tmp_path):
    train(config(toy[0], tmp_path, max_steps=1, val_manifest=str(toy[1])))
    raw = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert raw["schema_version"] == ckpt.SCHEMA_VERSION
    assert raw["config"]["backbone"] == "mobilenet" and raw["config"]["image_size"] == 96
    assert raw["step"] == 1 and "optimizer" in raw and "rng" in raw
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind

    p = load(tmp_path / "last.pt", score_thresh=0.0)
    img = np.full((80, 120, 3), 128, np.uint8)
    out = p.predict_arrays([img, img[:, :100]])
    assert len(out) == 2
    for o in out:
        k = len(o["scores"])
        assert k > 0  # threshold 0 keeps detections of an untrained net
        assert o["boxes"].shape == (k, 4) and o["rotation"].shape == (k, 3, 3) and o["landmarks5"].shape == (k, 5, 2)
        assert np.all(np.diff(o["scores"]) <= 0)
        assert np.allclose(o["rotation"] @ np.swapaxes(o["rotation"], 1, 2), np.eye(3), atol=1e-4)
        p_, y_, r_ = pose.to_euler(o["rotation"])
        assert np.allclose(o["yaw"], y_) and np.allclose(o["pitch"], p_)
    faces = p.predict(img)
    assert isinstance(faces, list) and set(faces[0]) == {"box", "score", "landmarks5", "rotation", "yaw", "pitch",
                                                         "roll"}
    assert len(p.predict([img, img])) == 2


def test_other_schema_version_is_refused(toy, tmp_path):
    train(config(toy[0], tmp_path, max_steps=1))
    raw = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    raw["schema_version"] = ckpt.SCHEMA_VERSION + 1
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(ckpt.CheckpointError, match="schema version 2.*reads version 1"):
        ckpt.load(tmp_path / "future.pt")
    with pytest.raises(ckpt.CheckpointError, match="schema version"):
        load(tmp_path / "future.pt")
    torch.save({"model": raw["model"]}, tmp_path / "bare.pt")
    with pytest.raises(ckpt.CheckpointError, match="not an hpe-train checkpoint"):
        ckpt.load(tmp_path / "bare.pt")


def test_predictor_maps_boxes_back_to_input_pixels(toy, tmp_path):
    """The same picture at 96 and 192 px: identical network input after letterboxing to 96 (a 2x nearest
    upscale averaged back by 2x2 blocks), so the outputs differ only by the mapping x192 = 2 (x96 + 0.5) - 0.5."""
    import cv2

    train(config(toy[0], tmp_path, max_steps=1))
    p = load(tmp_path / "last.pt", score_thresh=0.0, input_size=96)
    img = cv2.imread(str(toy[0].parent / "img" / "toy000.png"))[:, :, ::-1].copy()
    big = cv2.resize(img, (192, 192), interpolation=cv2.INTER_NEAREST)
    a, b = p.predict_arrays([img, big])
    assert len(a["scores"]) == len(b["scores"]) > 0
    assert np.allclose(b["boxes"], 2 * (a["boxes"] + 0.5) - 0.5, atol=1e-3)
    assert np.allclose(b["landmarks5"], 2 * (a["landmarks5"] + 0.5) - 0.5, atol=1e-3)
    assert np.allclose(b["rotation"], a["rotation"], atol=1e-6)


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("kind", ["cosine", "step"])
def test_schedule_follows_the_run_length(kind):
    s = Schedule(0.1, 1000, warmup_steps=50, kind=kind)
    assert s(0) == pytest.approx(0.01) and s(50) == pytest.approx(0.1)
    assert all(s(i) <= s(i + 1) + 1e-12 for i in range(49))
    assert all(d < 1000 for d in s.decay_steps())
    if kind == "cosine":
        assert s(999) == pytest.approx(0.001)
        assert all(s(i) >= s(i + 1) - 1e-12 for i in range(50, 999))
    else:
        assert s(599) == pytest.approx(0.1) and s(600) == pytest.approx(0.01) and s(999) == pytest.approx(0.001)
    with pytest.raises(ValueError):
        Schedule(0.1, 100, milestones=(0.5, 1.2), kind="step")  # a decay beyond the run


# ---------------------------------------------------------------- CLI


def test_cli_trains_and_reports_bad_input(toy, tmp_path):
    from cli.train import main

    r = CliRunner().invoke(main, ["--manifest", str(toy[0]), "--out", str(tmp_path / "run"), "--epochs", "1",
                                  "--batch-size", "4", "--image-size", "96", "--workers", "1", "--max-steps", "1",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.csv").is_file()
    r = CliRunner().invoke(main, ["--manifest", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no such manifest" in r.output
