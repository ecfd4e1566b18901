"""Benchmark cases. Each returns a dict of named numbers; `bench.__main__` gathers and prints them."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import manifests
from hpe_data import pose

from .common import best_of, decode_encode_floor, decode_warp_encode_floor, jpeg_files, median_latency


def manifest_read(tmp: Path, n: int = 1_000_000) -> dict:
    """Read (and validate) a 1M-row manifest."""
    rng = np.random.default_rng(0)
    ang = rng.uniform(-90, 90, (n, 3))
    R = pose.to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]).reshape(n, 9)

    def fsl(a, t):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=t), a.shape[1])

    cols = {
        "sample_id": pa.array([f"s{i:07d}" for i in range(n)]),
        "image_path": pa.array([f"img/{i:07d}.jpg" for i in range(n)]),
        "dataset": pa.array(["300w-lp"] * n),
        "subject": pa.array([f"p{i // 20}" for i in range(n)]),
        "width": pa.array(np.full(n, 450, np.int32)),
        "height": pa.array(np.full(n, 450, np.int32)),
        "bbox": fsl(np.tile(np.array([10, 10, 100, 100], np.float32), (n, 1)), pa.float32()),
        "landmarks": fsl(rng.uniform(0, 450, (n, 136)).astype(np.float32), pa.float32()),
        "landmarks_3d": pa.nulls(n, pa.list_(pa.float32(), 204)),
        "landmark_visible": fsl(np.ones((n, 68), bool), pa.bool_()),
        "landmarks_source": pa.array(["annotation"] * n),
        "yaw": pa.array(ang[:, 1]), "pitch": pa.array(ang[:, 0]), "roll": pa.array(ang[:, 2]),
        "rotation": fsl(R, pa.float64()),
        "in_range": pa.array(np.ones(n, bool)),
        "translation": pa.nulls(n, pa.list_(pa.float64(), 3)),
        "camera": pa.nulls(n, pa.list_(pa.float64(), 4)),
        "parent_id": pa.nulls(n, pa.string()),
        "augment": pa.nulls(n, pa.string()),
    }
    path = tmp / "manifest_1m.parquet"
    manifests.write(pa.table(cols), path)
    t0 = time.perf_counter()
    t = manifests.read(path)
    dt = time.perf_counter() - t0
    assert t.num_rows == n
    return {"manifest_read_rows_per_s": n / dt}


def pose_head(tmp: Path, size: int = 640) -> dict:
    """Latency of the detector with and without the pose head (same weights elsewhere), batch 1, CPU."""
    import torch

    from hpe_model import RetinaPose

    torch.manual_seed(0)
    with_pose = RetinaPose("mobilenet", pose_head=True).eval()
    without = RetinaPose("mobilenet", pose_head=False).eval()
    without.load_state_dict({k: v for k, v in with_pose.state_dict().items() if not k.startswith("pose_head")})
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        runs = [(median_latency(lambda: with_pose(x), runs=15), median_latency(lambda: without(x), runs=15))
                for _ in range(3)]
    lat_pose = float(np.median([a for a, _ in runs]))
    lat_base = float(np.median([b for _, b in runs]))
    return {"pose_head_overhead": lat_pose / lat_base - 1.0, "latency_ms_640": lat_pose * 1e3}


def predict(tmp: Path) -> dict:
    """images/s of predict at batch 1 and 16 on CPU, PyTorch and onnxruntime side by side."""
    from hpe_model.export import bench_predict

    return bench_predict(sizes=(640, 320), batch_sizes=(1, 16), threads=1)


# ---------------------------------------------------------------- data stages against their I/O floor


def _synth_manifest(tmp: Path, count: int = 100) -> tuple[Path, list[Path]]:
    """Synthetic AFLW2000-format faces imported into a manifest (cached per benchmark run)."""
    from hpe_data.importers import import_dataset
    from hpe_data.synth import synth

    root = tmp.parent / "_shared_aflw"
    out = root / "m.parquet"
    if not out.exists():
        synth("aflw2000", root / "data", count, seed=7, progress=False)
        import_dataset("aflw2000", root / "data", out)
    return out, jpeg_files(root / "data")


def import_300wlp(tmp: Path, n_files: int = 4000) -> dict:
    """Rows/s of `hpe-data import --dataset 300w-lp` with one worker, on 300W-LP-format files.

    A few synthetic samples are rendered, then linked under many names, so the timing is the importer's
    (reading .mat files and image headers), not the renderer's.
    """
    import os

    from hpe_data.importers import import_dataset
    from hpe_data.synth import synth

    src = tmp / "src"
    synth("300w-lp", src, 20, seed=3, progress=False)
    pairs = sorted((p, p.with_suffix(".mat")) for p in (src / "300W_LP" / "AFW").glob("*.jpg"))
    root = tmp / "root" / "300W_LP" / "HELEN"
    root.mkdir(parents=True)
    for i in range(n_files):
        jpg, mat = pairs[i % len(pairs)]
        os.symlink(jpg.resolve(), root / f"HELEN_{i:06d}_1_0.jpg")
        os.symlink(mat.resolve(), root / f"HELEN_{i:06d}_1_0.mat")
    t0 = time.perf_counter()
    res = import_dataset("300w-lp", tmp / "root", tmp / "m.parquet", workers=1)
    dt = time.perf_counter() - t0
    assert res.rows == n_files, res.summary()
    return {"import_rows_per_s_per_core": n_files / dt}


def masked(tmp: Path) -> dict:
    """Seconds per masked image over the JPEG decode + encode floor of the same images (one worker)."""
    from hpe_data.masks.stage import build_masked

    manifest, files = _synth_manifest(tmp)
    floor = decode_encode_floor(files, tmp / "floor")
    times = []
    for k in range(2):
        t0 = time.perf_counter()
        build_masked(manifest, tmp / f"m{k}.parquet", tmp / f"img{k}", seed=k, workers=1)
        times.append((time.perf_counter() - t0) / len(files))
    per = min(times)
    return {"masked_over_floor": per / floor, "masked_ms_per_image": per * 1e3, "jpeg_floor_ms": floor * 1e3}


def rotate(tmp: Path) -> dict:
    """Seconds per rotated image over decode + one bilinear warp + encode of the same images (one worker)."""
    from hpe_data.rotate import rotate as rotate_stage

    manifest, files = _synth_manifest(tmp)
    floor = decode_warp_encode_floor(files, tmp / "floor")
    times = []
    for k in range(2):
        t0 = time.perf_counter()
        rotate_stage(manifest, tmp / f"r{k}.parquet", tmp / f"img{k}", range_deg=45, seed=k, workers=1)
        times.append((time.perf_counter() - t0) / len(files))
    per = min(times)
    return {"rotate_over_floor": per / floor, "rotate_ms_per_image": per * 1e3, "warp_floor_ms": floor * 1e3}


def workers2(tmp: Path) -> dict:
    """Speed-up of the mask stage with 2 workers over 1 on the same images."""
    from hpe_data.masks.stage import build_masked

    manifest, _ = _synth_manifest(tmp)
    t = {}
    for w in (1, 2):
        t0 = time.perf_counter()
        build_masked(manifest, tmp / f"w{w}.parquet", tmp / f"img{w}", seed=0, workers=w, chunk_size=8)
        t[w] = time.perf_counter() - t0
    return {"workers2_speedup": t[1] / t[2]}


def loader(tmp: Path, image_size: int = 256, batch: int = 16) -> dict:
    """Input-pipeline images/s (decode + crop + photometric + flip, one process) over train-step images/s.

    The step is forward + loss + backward + SGD on the CPU with torch's default threads, at the same size.
    """
    import torch

    from hpe_model import RetinaPose
    from hpe_model.augment import Augment
    from hpe_model.data import FaceImages, collate, normalize

    manifest, _ = _synth_manifest(tmp)
    ds = FaceImages([manifest], Augment(image_size=image_size), seed=0)
    n = min(len(ds), 96)

    def load_all():
        for i in range(n):
            ds[(0, i)]

    load_all()  # warm the page cache
    loader_ips = n / best_of(load_all, 2)

    torch.manual_seed(0)
    model = RetinaPose("mobilenet")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = collate([ds[(0, i)] for i in range(batch)])
    x = normalize(images)

    def step():
        loss = model.loss(model(x), targets)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    step_ips = batch / best_of(step, 3)
    return {"loader_over_step": loader_ips / step_ips, "loader_images_per_s": loader_ips,
            "train_step_images_per_s": step_ips}
