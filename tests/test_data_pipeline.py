"""Training data pipeline: grouping by image, crops, flips, rotations, determinism, mixing sampler.

Ground truth comes from a toy face model built here: a mirror-symmetric 3D 68-point template projected
orthographically under a known R_cv. Any correct pose-consistent transform of such an image must leave its
landmarks equal to the projection of the template under the transformed pose -- a check that needs none of
the code under test.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manifests
from hpe_data import landmarks as L
from hpe_data import pose
from hpe_model.augment import Augment, crop_faces, letterbox, sample_crop
from hpe_model.data import FaceImages, MixSampler, collate, normalize, parse_manifest_arg, targets_from_faces

# ---------------------------------------------------------------- toy faces


def _template() -> np.ndarray:
    """(68, 3) mm in the head frame (x right, y down, z away from the viewer; the face looks towards -z)."""
    p = np.zeros((68, 3))
    t = np.linspace(0, np.pi, 17)
    p[0:17] = np.stack([-70 * np.cos(t), 10 + 70 * np.sin(t), 20 - 60 * np.sin(t)], 1)  # jaw, right ear first
    p[17:22] = np.stack([np.linspace(-55, -15, 5), [-35, -40, -42, -40, -36], np.full(5, -60)], 1)
    p[22:27] = np.stack([np.linspace(15, 55, 5), [-36, -40, -42, -40, -35], np.full(5, -60)], 1)
    p[27:31] = np.stack([np.zeros(4), np.linspace(-25, 10, 4), np.linspace(-65, -90, 4)], 1)
    p[31:36] = np.stack([np.linspace(-15, 15, 5), [18, 20, 21, 20, 18], np.full(5, -72)], 1)
    a = np.linspace(np.pi, -np.pi, 7)[:6]  # eye contours
    for c, s in ((36, -32), (42, 32)):
        p[c:c + 6] = np.stack([s + 12 * np.cos(a), -20 - 5 * np.sin(a), np.full(6, -58)], 1)
    a = np.linspace(np.pi, -np.pi, 13)[:12]
    p[48:60] = np.stack([25 * np.cos(a), 45 - 10 * np.sin(a), np.full(12, -65)], 1)
    a = np.linspace(np.pi, -np.pi, 9)[:8]
    p[60:68] = np.stack([15 * np.cos(a), 45 - 4 * np.sin(a), np.full(8, -66)], 1)
    mirrored = p[L.FLIP_PERM] * [-1, 1, 1]
    return (p + mirrored) / 2  # exactly symmetric under the 68-point flip permutation


TEMPLATE = _template()


def project(R, scale, center) -> np.ndarray:
    """Orthographic image of the template: x_img = s * (R X)_xy + c (y down, like the camera frame)."""
    X = TEMPLATE @ np.asarray(R).reshape(3, 3).T
    return scale * X[:, :2] + np.asarray(center, dtype=np.float64)


def fit_residual(lm, R) -> float:
    """Max pixel residual of the best scale + translation fit of the template projected under R to lm."""
    P = (TEMPLATE @ np.asarray(R).reshape(3, 3).T)[:, :2]
    lm = np.asarray(lm, np.float64).reshape(68, 2)
    Pc, lc = P - P.mean(0), lm - lm.mean(0)
    s = (Pc * lc).sum() / (Pc * Pc).sum()
    return float(np.abs(s * Pc - lc).max())


def draw_face(img, lm) -> None:
    lm = np.round(lm).astype(np.int32)
    outline = np.concatenate([lm[0:17], lm[26:16:-1]])
    cv2.fillPoly(img, [cv2.convexHull(outline)], (205, 160, 130))
    for a, b, col in ((36, 42, (40, 30, 20)), (42, 48, (40, 30, 20)), (48, 60, (170, 50, 50))):
        cv2.fillPoly(img, [lm[a:b]], col)
    cv2.polylines(img, [lm[27:31], lm[31:36]], False, (120, 80, 60), 1)
    cv2.polylines(img, [lm[17:22], lm[22:27]], False, (60, 40, 30), 2)


def toy_rows(rng, width, height, n_faces, image_path, stem, no_pose=False, no_landmarks=False):
    rows, placed = [], []
    for k in range(n_faces):
        R = pose.to_matrix(rng.uniform(-30, 30), rng.uniform(-60, 60), rng.uniform(-20, 20))
        for _ in range(50):  # faces do not overlap (a hidden face would contradict its label)
            size = rng.uniform(0.18, 0.4) * min(width, height)
            c = rng.uniform([size, size], [width - size, height - size])
            lm = project(R, size / 150, c)
            b = L.bbox(lm)
            if all(b[0] > q[2] + 2 or q[0] > b[2] + 2 or b[1] > q[3] + 2 or q[1] > b[3] + 2 for q in placed):
                break
        else:
            break
        placed.append(b)
        p, y, r = pose.to_euler(R)
        row = {"sample_id": f"{stem}_{k}", "image_path": image_path, "dataset": "toy", "subject": stem,
               "width": width, "height": height, "bbox": L.bbox(lm), "landmarks": lm.reshape(-1),
               "landmark_visible": np.ones(68, bool), "landmarks_source": "synthetic",
               "yaw": float(y), "pitch": float(p), "roll": float(r), "rotation": R.reshape(-1),
               "in_range": True}
        if no_pose and k == 0:
            row.update(rotation=None, yaw=None, pitch=None, roll=None, in_range=None)
        if no_landmarks and k == 0:
            row.update(landmarks=None, landmark_visible=None)
        rows.append(row)
    return rows


def write_toy_set(out_dir, n_images=8, size=(128, 112), faces=(1, 2), seed=0, name="toy.parquet",
                  no_pose_every=0, no_landmarks_every=0) -> Path:
    """Toy images with 1-2 posed template faces each (no overlap check: it does not matter here)."""
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    W, H = size
    rows = []
    for i in range(n_images):
        bg = rng.integers(40, 200, 3)
        img = np.clip(bg + rng.normal(0, 12, (H, W, 3)), 0, 255).astype(np.uint8)
        stem = f"{Path(name).stem}{i:03d}"
        r = toy_rows(rng, W, H, int(rng.integers(faces[0], faces[1] + 1)), f"img/{stem}.png", stem,
                     no_pose=bool(no_pose_every) and i % no_pose_every == 0,
                     no_landmarks=bool(no_landmarks_every) and i % no_landmarks_every == 0)
        for row in r:
            if row["landmarks"] is not None:
                draw_face(img, row["landmarks"].reshape(68, 2))
        cv2.imwrite(str(out_dir / "img" / f"{stem}.png"), img[:, :, ::-1])
        rows += r
    return manifests.write(rows, out_dir / name)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_set(tmp_path_factory.mktemp("toy"), n_images=6, faces=(1, 3), no_pose_every=3,
                         no_landmarks_every=4)


def by_id(path):
    return {r["sample_id"]: r for r in manifests.read_rows(path)}


# ---------------------------------------------------------------- the toy model itself


def test_toy_template_is_pose_consistent():
    R = pose.to_matrix(10, 40, -15)
    assert fit_residual(project(R, 0.7, (50, 60)), R) < 1e-9
    assert fit_residual(project(R, 0.7, (50, 60)), pose.to_matrix(10, 45, -15)) > 1.0  # 5 degrees is visible


# ---------------------------------------------------------------- grouping and targets


def test_one_sample_per_image_with_all_its_faces(toy):
    ds = FaceImages([toy], Augment(96, color=False))
    rows = manifests.read_rows(toy)
    assert len(ds) == len({r["image_path"] for r in rows})
    seen = []
    for i in range(len(ds)):
        _, faces, _ = ds.raw(i)
        assert len({f["sample_id"].rsplit("_", 1)[0] for f in faces}) == 1  # one image's faces only
        seen += [f["sample_id"] for f in faces]
    assert sorted(seen) == sorted(r["sample_id"] for r in rows)


def test_missing_pose_and_landmarks_are_flagged(toy):
    rows = by_id(toy)
    ds = FaceImages([toy], Augment(96, crop_scales=(1.0, 1.0), color=False, flip_prob=0.0))
    n_pose = n_lm = 0
    for i in range(len(ds)):
        _, faces, _ = ds.sample(0, i)
        t = targets_from_faces(faces)
        for j, f in enumerate(faces):
            src = rows[f["sample_id"]]
            assert bool(t["has_pose"][j]) == (src["rotation"] is not None)
            assert bool(t["has_landmarks"][j]) == (src["landmarks"] is not None)
            n_pose += src["rotation"] is None
            n_lm += src["landmarks"] is None
            if src["rotation"] is None:
                assert torch.equal(t["rotation"][j], torch.eye(3))  # finite filler, masked by has_pose
    assert n_pose and n_lm  # the fixture really has such faces


def test_getitem_and_collate_shapes(toy):
    ds = FaceImages([toy], Augment(96))
    batch = collate([ds[(0, i)] for i in range(3)])
    images, targets = batch
    assert images.shape == (3, 3, 96, 96) and images.dtype == torch.uint8
    for t in targets:
        f = t["boxes"].shape[0]
        assert f >= 1
        assert t["landmarks5"].shape == (f, 5, 2) and t["rotation"].shape == (f, 3, 3)
        assert t["has_pose"].dtype == torch.bool and t["has_landmarks"].shape == (f,)
    x = normalize(images)
    assert x.dtype == torch.float32
    assert torch.allclose(x[:, 0].mean() + 123.0, images[:, 0].float().mean())


# ---------------------------------------------------------------- flips


def test_flip_conjugates_pose_and_mirrors_everything(toy):
    rows = by_id(toy)
    plain = FaceImages([toy], Augment(96, flip_prob=0.0, color=False))
    flipped = FaceImages([toy], Augment(96, flip_prob=1.0, color=False))
    for i in range(len(plain)):
        img0, faces0, meta0 = plain.sample(3, i)
        img1, faces1, meta1 = flipped.sample(3, i)
        assert meta1["flipped"] and not meta0["flipped"] and meta0["crop"] == meta1["crop"]
        assert np.array_equal(img1, img0[:, ::-1])
        t0, t1 = targets_from_faces(faces0), targets_from_faces(faces1)
        for j, f in enumerate(faces1):
            src = rows[f["sample_id"]]
            if src["rotation"] is not None:
                R = src["rotation"].reshape(3, 3)
                assert np.allclose(t1["rotation"][j].numpy(), pose.flip(R), atol=1e-6)
                assert np.allclose(t1["rotation"][j].numpy(), np.diag([-1, 1, 1]) @ R @ np.diag([-1, 1, 1]),
                                   atol=1e-6)
                p, y, r = pose.to_euler(t1["rotation"][j].numpy().astype(np.float64))
                assert np.allclose([p, y, r], [src["pitch"], -src["yaw"], -src["roll"]], atol=1e-3)
            if src["landmarks"] is not None and src["rotation"] is not None:
                # the mirrored landmarks are the template seen under the mirrored pose
                assert fit_residual(f["landmarks"], pose.flip(src["rotation"].reshape(3, 3))) < 1e-3  # float32 storage
                # five points: eye_a of the mirror is eye_b of the original, mirrored (x' = S - 1 - x)
                a, b = t0["landmarks5"][j].numpy(), t1["landmarks5"][j].numpy()
                assert np.allclose(b[[1, 0, 2, 4, 3], 0], 95 - a[:, 0], atol=1e-4)
                assert np.allclose(b[[1, 0, 2, 4, 3], 1], a[:, 1], atol=1e-4)
            b0, b1 = t0["boxes"][j].numpy(), t1["boxes"][j].numpy()
            assert np.allclose(b1, [95 - b0[2], b0[1], 95 - b0[0], b0[3]], atol=1e-4)


# ---------------------------------------------------------------- crops


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(40, 200), st.integers(40, 200))
def test_sample_crop_keeps_a_whole_face(seed, W, H):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4))
    wh = rng.uniform(4, 0.9 * min(W, H), (n, 1)) * [1, rng.uniform(0.7, 1.0)]
    xy = rng.uniform(0, 1, (n, 2)) * ([W, H] - wh - 1)
    boxes = np.hstack([xy, xy + wh])
    x0, y0, side = sample_crop(boxes, W, H, rng, (0.3, 1.0))
    whole = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x0 + side - 1) & (boxes[:, 3] <= y0 + side - 1)
    assert whole.any()
    assert side >= round(0.3 * min(W, H)) - 1
    if side <= min(W, H):
        assert 0 <= x0 <= W - side and 0 <= y0 <= H - side


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_crop_faces_shifts_exactly_and_keeps_pose(seed):
    rng = np.random.default_rng(seed)
    faces = toy_rows(rng, 200, 160, 3, "x.png", "s")
    x0, y0, side = int(rng.integers(0, 80)), int(rng.integers(0, 60)), int(rng.integers(30, 100))
    out = crop_faces([dict(f) for f in faces], x0, y0, side)
    kept = {f["sample_id"]: f for f in out}
    for f in faces:
        b = f["bbox"]
        cx, cy = (b[0] + b[2]) / 2 - x0, (b[1] + b[3]) / 2 - y0
        inside = 0 <= cx <= side - 1 and 0 <= cy <= side - 1
        assert (f["sample_id"] in kept) == inside  # the documented rule: box centre inside the crop
        if inside:
            g = kept[f["sample_id"]]
            assert np.array_equal(g["rotation"], f["rotation"])
            assert np.allclose(g["landmarks"].reshape(68, 2), f["landmarks"].reshape(68, 2) - [x0, y0], atol=1e-12)
            assert np.allclose(g["bbox"], np.clip(b - [x0, y0, x0, y0], 0, side - 1), atol=1e-12)
            assert g["width"] == side and g["height"] == side


def test_crop_in_the_pipeline_is_a_pure_shift(toy):
    """Crop side = short side = training size: no resize, so pixels and labels must be an exact shift."""
    rows = by_id(toy)
    ds = FaceImages([toy], Augment(112, crop_scales=(1.0, 1.0), flip_prob=0.0, color=False))
    shifted = 0
    for e in range(3):
        for i in range(len(ds)):
            full, _, _ = ds.raw(i)
            img, faces, meta = ds.sample(e, i)
            x0, y0, side = meta["crop"]
            assert side == 112 and y0 == 0
            assert np.array_equal(img, full[y0:y0 + side, x0:x0 + side])
            shifted += x0 != 0
            for f in faces:
                src = rows[f["sample_id"]]
                if src["landmarks"] is not None:
                    assert np.allclose(f["landmarks"].reshape(68, 2), src["landmarks"].reshape(68, 2) - [x0, y0],
                                       atol=1e-4)
                if src["rotation"] is not None:
                    assert np.array_equal(f["rotation"], src["rotation"])
                assert np.allclose(f["bbox"], np.clip(src["bbox"] - [x0, y0, x0, y0], 0, 111), atol=1e-4)
    assert shifted  # the 128-wide frames were really cut at several offsets


def test_resized_crop_maps_landmarks_like_the_pixels(toy):
    """After crop + resize the drawn eyes must sit where the label says (checked on the pixels)."""
    ds = FaceImages([toy], Augment(96, flip_prob=0.0, color=False, random_interp=False))
    checked = 0
    for i in range(len(ds)):
        img, faces, _ = ds.sample(1, i)
        for f in faces:
            if f["landmarks"] is None:
                continue
            lm = f["landmarks"].reshape(68, 2)
            w = f["bbox"][2] - f["bbox"][0]
            eye = lm[36:42].mean(0)
            if w < 30 or not (2 <= eye[0] <= 93 and 2 <= eye[1] <= 93):
                continue
            x, y = np.round(eye).astype(int)
            patch = img[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
            assert patch.max() < 110, patch  # dark eye pixel (skin is ~(205,160,130))
            checked += 1
    assert checked >= 2


# ---------------------------------------------------------------- in-plane rotation


def test_online_rotation_composes_the_pose(toy):
    rows = by_id(toy)
    ds = FaceImages([toy], Augment(96, flip_prob=0.0, color=False, rotate_prob=1.0, rotate_max=40))
    n = 0
    for i in range(len(ds)):
        _, faces, meta = ds.sample(0, i)
        theta = meta["rotate_deg"]
        assert theta != 0
        for f in faces:
            src = rows[f["sample_id"]]
            if src["rotation"] is None:
                continue
            R1 = pose.rotate_inplane(src["rotation"].reshape(3, 3), theta)
            assert np.allclose(f["rotation"].reshape(3, 3), R1, atol=1e-9)
            if f["landmarks"] is not None:
                assert fit_residual(f["landmarks"], R1) < 1e-3  # image and label still agree
                n += 1
    assert n


def test_rotation_never_pushes_a_face_out(tmp_path):
    """Faces at the border: rotations that would lose a face are skipped, never an error or a lost label."""
    rows = []
    for k, (cx, cy) in enumerate([(9, 9), (86, 86)]):  # in two corners of a 96 x 96 frame
        R = pose.to_matrix(0, 30 * k, 10)
        lm = project(R, 16 / 150, (cx, cy))
        rows.append({"sample_id": f"b_{k}", "image_path": "img/b.png", "dataset": "toy", "width": 96,
                     "height": 96, "bbox": L.bbox(lm), "landmarks": lm.reshape(-1), "rotation": R.reshape(-1)})
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "b.png"), np.full((96, 96, 3), 90, np.uint8))
    m = manifests.write(rows, tmp_path / "b.parquet")
    ds = FaceImages([m], Augment(96, rotate_prob=1.0, rotate_max=90, color=False, flip_prob=0.0))
    turned = 0
    for e in range(30):
        _, faces, meta = ds.sample(e, 0)
        assert faces
        turned += meta["rotate_deg"] != 0
        for f in faces:
            assert np.isfinite(f["bbox"]).all()
            src = rows[int(f["sample_id"][-1])]
            R1 = pose.rotate_inplane(src["rotation"].reshape(3, 3), meta["rotate_deg"])
            assert np.allclose(f["rotation"].reshape(3, 3), R1, atol=1e-9)
    assert 0 < turned < 30  # some angles keep both faces inside, some would not


# ---------------------------------------------------------------- determinism and photometric


def test_sample_is_a_function_of_seed_epoch_index(toy):
    a = FaceImages([toy], Augment(96, rotate_prob=0.5, rotate_max=20), seed=5)
    b = FaceImages([toy], Augment(96, rotate_prob=0.5, rotate_max=20), seed=5)
    for i in (0, 3):
        x0, t0 = a[(2, i)]
        x1, t1 = b[(2, i)]
        assert torch.equal(x0, x1) and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert not torch.equal(a[(2, 0)][0], a[(3, 0)][0])
    c = FaceImages([toy], Augment(96), seed=6)
    assert not torch.equal(a[(2, 0)][0], c[(2, 0)][0])


def test_photometric_changes_colour_not_geometry(toy):
    plain = FaceImages([toy], Augment(96, color=False))
    color = FaceImages([toy], Augment(96, color=True))
    changed = 0
    for i in range(len(plain)):
        img0, faces0, _ = plain.sample(4, i)
        img1, faces1, _ = color.sample(4, i)
        assert img1.dtype == np.uint8 and img1.shape == img0.shape
        changed += not np.array_equal(img0, img1)
        for f0, f1 in zip(faces0, faces1):
            assert np.array_equal(f0["bbox"], f1["bbox"])
    assert changed


def test_photometric_keeps_grey_grey_and_stays_in_range():
    """Hue and saturation cannot colour a grey image; brightness and contrast move all channels alike."""
    from hpe_model.augment import photometric

    grey = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1), 3, 2).astype(np.uint8)
    seen = set()
    for seed in range(40):
        out = photometric(grey, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == grey.shape
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        seen.add(int(out.astype(int).sum() != grey.astype(int).sum()))
    assert seen == {0, 1}  # sometimes untouched (each op has probability 1/2), sometimes changed


def test_letterbox_round_trip():
    img = np.zeros((90, 180, 3), np.uint8)
    out, s = letterbox(img, 96)
    assert out.shape == (96, 96, 3) and s == pytest.approx(96 / 180)
    assert (out[48:, :, 0] == 123).all()  # padding is the mean colour (zero after normalisation)


# ---------------------------------------------------------------- manifests and sampler


def test_parse_manifest_arg():
    assert parse_manifest_arg("a/b.parquet") == ("a/b.parquet", None)
    assert parse_manifest_arg("a/b.parquet:2.5") == ("a/b.parquet", 2.5)
    assert parse_manifest_arg("C:/data/x.parquet") == ("C:/data/x.parquet", None)
    with pytest.raises(ValueError, match="positive"):
        parse_manifest_arg("a.parquet:0")


def test_sampler_sees_every_image_once_without_weights():
    s = MixSampler([5, 7], batch_size=3, seed=1)
    order = [i for _, i in s]
    assert len(order) == 12 and sorted(order) == list(range(12))
    s.set_epoch(1)
    assert [i for _, i in s] != order


def test_sampler_weights_and_rank_slices():
    sizes = [10, 40]
    s = MixSampler(sizes, [3.0, 1.0], batch_size=5, seed=0, epoch_size=100)
    g = s.global_order(0)
    assert len(g) == 100
    assert (g < 10).sum() == 75  # 3:1 share of the epoch
    assert np.bincount(g[g < 10]).min() >= 7  # cycles through the small manifest before repeating
    # two ranks with batch 5 see exactly the global batches of one process with batch 10
    r = [MixSampler(sizes, [3.0, 1.0], batch_size=5, seed=0, rank=k, world=2, epoch_size=100) for k in range(2)]
    one = MixSampler(sizes, [3.0, 1.0], batch_size=10, seed=0, epoch_size=100)
    go = one.global_order(0).reshape(-1, 10)
    ro = [x.rank_order(0).reshape(-1, 5) for x in r]
    assert np.array_equal(np.concatenate(ro, 1), go)
    r[1].set_epoch(0, start=5)
    assert [i for _, i in r[1]] == list(ro[1].reshape(-1)[5:])


def test_two_manifests_index_both(toy, tmp_path):
    other = write_toy_set(tmp_path, n_images=3, seed=9, name="other.parquet")
    ds = FaceImages([toy, other], Augment(96))
    assert ds.sizes == [6, 3] and len(ds) == 9
    _, faces, path = ds.raw(8)
    assert Path(path).parent.parent == tmp_path and faces[0]["sample_id"].startswith("other")


def test_bad_image_size_is_reported(tmp_path):
    m = write_toy_set(tmp_path, n_images=1)
    rows = manifests.read_rows(m)
    for r in rows:
        r["width"] = 300
    manifests.write(rows, m)
    ds = FaceImages([m], Augment(96))
    with pytest.raises(RuntimeError, match="the manifest says 300x112"):
        ds[(0, 0)]
