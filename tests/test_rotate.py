"""The rotate and flip stages on real AFLW2000 samples, a synthetic head and a synthetic 300W-LP set."""
import json
import os

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

import manifests
from hpe_data import imageio, pose, transforms
from hpe_data import rotate as stage

CENTRE = (224.5, 224.5)  # the 450 x 450 AFLW2000 image centre (0-based)


def aflw_rows(refdata, names=None):
    """Manifest rows for the real AFLW2000 samples, read with scipy (pt3d_68 -> landmarks, Pose_Para -> pose).

    The .mat pixels are 1-based MATLAB coordinates (see hpe_data.importers.mat), hence the -1.
    """
    rows = []
    for mat in sorted((refdata / "aflw2000").glob("*.mat")):
        if names and mat.stem not in names:
            continue
        m = scipy.io.loadmat(mat)
        lm3 = m["pt3d_68"].astype(np.float64).T
        lm3[:, :2] -= 1.0
        p, y, r = np.degrees(m["Pose_Para"][0, :3].astype(np.float64))
        rows.append(dict(
            sample_id=f"aflw2000/{mat.stem}", image_path=str(mat.with_suffix(".jpg")), dataset="aflw2000",
            subject=mat.stem, width=450, height=450, bbox=transforms.face_box(lm3[:, :2], 450, 450),
            landmarks=lm3[:, :2].reshape(-1), landmarks_3d=lm3.reshape(-1), landmark_visible=None,
            landmarks_source="fitted", yaw=y, pitch=p, roll=r, rotation=pose.to_matrix(p, y, r).reshape(-1),
            in_range=bool(pose.in_range(p, y, r)), translation=None, camera=None, parent_id=None, augment=None))
    return rows


def spread(rows, rotations=None):
    """Conventions §1 check: de-rotate each face's 3D landmarks with its own R_cv; mean distance of the
    centred, unit-normalised shapes to their mean. About 0.07 for correct labels."""
    shapes = []
    for i, r in enumerate(rows):
        p = np.reshape(r["landmarks_3d"], (68, 3)).astype(np.float64)
        cam = np.stack([p[:, 0], p[:, 1], -p[:, 2]], 1)  # z towards the viewer -> camera z
        cam -= cam.mean(0)
        R = np.reshape(r["rotation"] if rotations is None else rotations[i], (3, 3))
        head = cam @ R  # rows of R.T @ p
        shapes.append(head / np.linalg.norm(head))
    shapes = np.array(shapes)
    return float(np.linalg.norm(shapes - shapes.mean(0), axis=(1, 2)).mean())


def naive(rows, thetas):
    """The roll-only label of the project this replaces (roll - theta is right for a frontal head)."""
    return [pose.to_matrix(r["pitch"], r["yaw"], r["roll"] - t) for r, t in zip(rows, thetas)]


@pytest.fixture(scope="module")
def real_rows(refdata):
    rows = aflw_rows(refdata)
    assert len(rows) == 16
    return rows


# ---------------------------------------------------------------- label consistency on real faces


@pytest.mark.parametrize("kind", ["+45", "-45", "random"])
def test_derotation_spread_survives_rotation(real_rows, kind):
    rng = np.random.default_rng(11)
    thetas = {"+45": [45.0] * 16, "-45": [-45.0] * 16, "random": list(rng.uniform(-45, 45, 16))}[kind]
    assert spread(real_rows) <= 0.09
    rotated = [transforms.rotate_row(r, t, CENTRE) for r, t in zip(real_rows, thetas)]
    assert spread(rotated) <= 0.09
    # the roll-only label fails the same check: the test has teeth
    bad = spread(rotated, naive(real_rows, thetas))
    assert bad > (0.25 if kind != "random" else 0.15), bad


def sample(img, pts):
    """Bilinear colours of an RGB image at (N, 2) points."""
    m = cv2.remap(img.astype(np.float32), pts[:, :1].astype(np.float32), pts[:, 1:].astype(np.float32),
                  cv2.INTER_LINEAR)
    return m[:, 0]


# ---------------------------------------------------------------- the stage end to end


@pytest.fixture(scope="module")
def rotated(real_rows, tmp_path_factory):
    """The rotate stage run three times: twice with one worker (same seed), once with two workers."""
    base = tmp_path_factory.mktemp("rot")
    src = manifests.write(real_rows[:8], base / "in.parquet")
    runs = {}
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        out = base / name / "rot.parquet"
        # chunks of 2 images: the two-worker run really spreads 4 chunks over a process pool
        res = stage.rotate(src, out, base / name / "img", range_deg=45, copies=2, seed=7, workers=workers,
                           chunk_size=2)
        runs[name] = (res, out)
    return src, runs


def test_stage_writes_rotated_images_with_consistent_labels(rotated, real_rows):
    src, runs = rotated
    res, out = runs["a"]
    assert res.rows == 16 and not res.errors
    rows = manifests.read_rows(out)
    parents = {r["sample_id"]: r for r in real_rows}
    thetas = []
    for r in rows:
        parent = parents[r["parent_id"]]
        assert r["sample_id"] in (parent["sample_id"] + "@rot0", parent["sample_id"] + "@rot1")
        op = json.loads(r["augment"])[-1]
        assert op["op"] == "rotate" and op["center"] == list(CENTRE) and -45 <= op["theta"] <= 45
        assert r["rotate_deg"] == pytest.approx(op["theta"])
        thetas.append(op["theta"])
        R = np.reshape(r["rotation"], (3, 3))
        assert np.allclose(R, pose.rz(np.radians(-op["theta"])) @ np.reshape(parent["rotation"], (3, 3)), atol=1e-9)
        assert 0.0 < r["valid_fraction"] <= 1.0
        img = imageio.read_rgb(manifests.resolve_image(out, r["image_path"]))
        assert img.shape == (450, 450, 3)
        # colours under the rotated landmarks = colours under the original ones (and not under a wrong turn)
        orig = imageio.read_rgb(parent["image_path"])
        lm0, lm1 = np.reshape(parent["landmarks"], (68, 2)), np.reshape(r["landmarks"], (68, 2))
        wrong = cv2.transform(lm0[None], cv2.getRotationMatrix2D(CENTRE, -op["theta"], 1))[0]
        ok = transforms.in_frame(lm1, 450, 450) & transforms.in_frame(wrong, 450, 450) & \
            transforms.in_frame(lm0, 450, 450)
        good = np.abs(sample(img, lm1[ok]) - sample(orig, lm0[ok])).mean()
        bad = np.abs(sample(img, wrong[ok]) - sample(orig, lm0[ok])).mean()
        assert good < 12 and (good < 0.5 * bad or abs(op["theta"]) < 3), (r["sample_id"], good, bad)
    assert spread(rows) <= 0.09
    assert np.std(thetas) > 10  # the angles are spread over the range, not one value


def test_stage_is_deterministic_and_independent_of_workers(rotated):
    _, runs = rotated
    tables = {k: manifests.read(out) for k, (_, out) in runs.items()}
    assert tables["a"].equals(tables["b"]) and tables["a"].equals(tables["c"])
    for r in manifests.table_to_rows(tables["a"]):
        data = [(out.parent / r["image_path"]).read_bytes() for _, out in runs.values()]
        assert data[0] == data[1] == data[2]


def test_stage_paths_are_relative_to_the_output(rotated):
    _, runs = rotated
    res, out = runs["a"]
    for r in manifests.read_rows(out):
        assert not os.path.isabs(r["image_path"]) and r["image_path"].startswith("img" + os.sep)
        assert r["image_path"].endswith(("@rot0.jpg", "@rot1.jpg"))


def test_fixed_angles_and_originals(real_rows, tmp_path):
    src = manifests.write(real_rows[:3], tmp_path / "in.parquet")
    out = tmp_path / "sub" / "rot.parquet"
    res = stage.rotate(src, out, tmp_path / "img", angles=[-30.0, 45.0], include_original=True)
    rows = {r["sample_id"]: r for r in manifests.read_rows(out)}
    assert res.rows == 9
    for parent in real_rows[:3]:
        orig = rows[parent["sample_id"]]
        assert orig["parent_id"] is None and np.array_equal(orig["rotation"], parent["rotation"])
        assert manifests.resolve_image(out, orig["image_path"]).resolve() == \
            (tmp_path / parent["image_path"]).resolve()
        for k, t in enumerate((-30.0, 45.0)):
            r = rows[f"{parent['sample_id']}@rot{k}"]
            assert r["rotate_deg"] == t
            expect = transforms.rotate_row(parent, t, CENTRE)
            assert np.allclose(r["landmarks"], expect["landmarks"], atol=1e-3)
            assert (r["pitch"], r["yaw"], r["roll"]) == pytest.approx((expect["pitch"], expect["yaw"], expect["roll"]))


def test_mask_png_rotates_with_the_image(real_rows, tmp_path):
    """A row from build-masked (mask_path, mask, occluded) keeps its columns; its soft mask turns too."""
    row = dict(real_rows[0])
    mask = np.zeros((450, 450), np.uint8)
    cv2.ellipse(mask, (225, 330), (150, 90), 0, 0, 360, 255, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 3)
    mask[:, :4] = 200  # a strip on the image edge: reflected by a careless border, absent with constant 0
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    occ = np.zeros(68, bool)
    occ[48:68] = True
    row.update(mask_path="m.png", mask="surgical", occluded=occ)
    src = manifests.write([row], tmp_path / "in.parquet")
    out = tmp_path / "rot.parquet"
    stage.rotate(src, out, tmp_path / "img", angles=[40.0])
    r = manifests.read_rows(out)[0]
    assert r["mask"] == "surgical" and np.array_equal(r["occluded"], occ)
    mpath = manifests.resolve_image(out, r["mask_path"])
    assert mpath.parent == manifests.resolve_image(out, r["image_path"]).parent and mpath.suffix == ".png"
    got = cv2.imread(str(mpath), cv2.IMREAD_UNCHANGED)
    ref = cv2.warpAffine(mask, cv2.getRotationMatrix2D(CENTRE, 40.0, 1), (450, 450), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.array_equal(got, ref)  # PNG is lossless
    assert got[0, 0] == 0 and got[-1, -1] == 0


def test_bad_inputs_are_reported_and_good_rows_kept(real_rows, tmp_path):
    rows = [dict(r) for r in real_rows[:3]]
    rows[1]["image_path"] = str(tmp_path / "missing.jpg")
    rows[2]["width"] = 451
    src = manifests.write(rows, tmp_path / "in.parquet")
    res = stage.rotate(src, tmp_path / "rot.parquet", tmp_path / "img", copies=1)
    assert res.rows == 1
    reasons = dict(res.errors)
    assert reasons[str(tmp_path / "missing.jpg")] == "image file missing"
    assert "450x450" in reasons[rows[2]["image_path"]] and "451x450" in reasons[rows[2]["image_path"]]
    assert res.error_report.exists()


def test_flip_stage(real_rows, tmp_path):
    src = manifests.write(real_rows[:4], tmp_path / "in.parquet")
    out = tmp_path / "flip.parquet"
    res = stage.flip(src, out, tmp_path / "img")
    assert res.rows == 4
    for r in manifests.read_rows(out):
        parent = next(p for p in real_rows if p["sample_id"] == r["parent_id"])
        assert r["sample_id"] == parent["sample_id"] + "@flip" and r["flipped"] is True
        expect = transforms.flip_row(parent)
        for k in ("landmarks", "landmarks_3d", "bbox", "rotation"):
            assert np.allclose(r[k], expect[k], atol=1e-3), k
        assert (r["yaw"], r["roll"]) == pytest.approx((-parent["yaw"], -parent["roll"]))
        img = imageio.read_rgb(manifests.resolve_image(out, r["image_path"])).astype(int)
        orig = imageio.read_rgb(parent["image_path"]).astype(int)
        assert np.abs(img - orig[:, ::-1]).mean() < 3  # mirrored (JPEG re-encoding only)
        assert json.loads(r["augment"]) == [{"op": "flip"}]
    assert spread(manifests.read_rows(out)) <= 0.09


def test_rotate_then_flip_equals_flip_then_rotate_back(real_rows, tmp_path):
    """F(rotate by t) == rotate(F) by -t: both stages, composed through manifests in either order."""
    src = manifests.write(real_rows[:2], tmp_path / "in.parquet")
    stage.rotate(src, tmp_path / "r.parquet", tmp_path / "img", angles=[25.0])
    stage.flip(tmp_path / "r.parquet", tmp_path / "rf.parquet", tmp_path / "img")
    stage.flip(src, tmp_path / "f.parquet", tmp_path / "img")
    stage.rotate(tmp_path / "f.parquet", tmp_path / "fr.parquet", tmp_path / "img", angles=[-25.0])
    a = {r["sample_id"].split("@")[0]: r for r in manifests.read_rows(tmp_path / "rf.parquet")}
    b = {r["sample_id"].split("@")[0]: r for r in manifests.read_rows(tmp_path / "fr.parquet")}
    assert a.keys() == b.keys() and len(a) == 2
    for k in a:
        for col in ("landmarks", "bbox", "rotation"):
            assert np.allclose(a[k][col], b[k][col], atol=1e-3), col
        ia = imageio.read_rgb(manifests.resolve_image(tmp_path / "rf.parquet", a[k]["image_path"])).astype(int)
        ib = imageio.read_rgb(manifests.resolve_image(tmp_path / "fr.parquet", b[k]["image_path"])).astype(int)
        assert np.abs(ia - ib)[60:390, 60:390].mean() < 4


def test_shards_merge_to_the_unsharded_run(real_rows, tmp_path):
    src = manifests.write(real_rows[:5], tmp_path / "in.parquet")
    stage.rotate(src, tmp_path / "all.parquet", tmp_path / "img", copies=2, seed=3)
    for i in range(2):
        stage.rotate(src, tmp_path / "sh.parquet", tmp_path / "img", copies=2, seed=3, shard=(i, 2))
    merged = manifests.merge([manifests.parts_dir(tmp_path / "sh.parquet")], tmp_path / "merged.parquet")
    assert manifests.read(merged).equals(manifests.read(tmp_path / "all.parquet"))


def test_cli(real_rows, tmp_path):
    from cli.data import main

    src = manifests.write(real_rows[:2], tmp_path / "in.parquet")
    run = CliRunner().invoke(main, ["rotate", "--manifest", str(src), "--out", str(tmp_path / "r.parquet"),
                                    "--images-dir", str(tmp_path / "img"), "--angles", "10,-20", "--border",
                                    "constant"])
    assert run.exit_code == 0, run.output
    assert "4 row(s)" in run.output
    rows = manifests.read_rows(tmp_path / "r.parquet")
    assert sorted(r["rotate_deg"] for r in rows) == [-20.0, -20.0, 10.0, 10.0]
    img = imageio.read_rgb(manifests.resolve_image(tmp_path / "r.parquet", rows[0]["image_path"]))
    assert img[:3, :3].max() < 10  # constant border: black corners
    run = CliRunner().invoke(main, ["flip", "--manifest", str(tmp_path / "r.parquet"), "--out",
                                    str(tmp_path / "rf.parquet"), "--images-dir", str(tmp_path / "img")])
    assert run.exit_code == 0 and "4 row(s)" in run.output, run.output
    run = CliRunner().invoke(main, ["rotate", "--manifest", str(src), "--out", str(tmp_path / "x.parquet"),
                                    "--images-dir", str(tmp_path / "img"), "--angles", "1,2", "--copies", "3"])
    assert run.exit_code != 0 and "--copies 3" in run.output


# ---------------------------------------------------------------- synthetic head: rotate == render rotated


def test_rotated_render_equals_render_at_rolled_pose():
    """A head rendered at R and rotated by t matches the same head rendered directly at Rz(-t) @ R."""
    head = pytest.importorskip("hpe_data.head")
    render = pytest.importorskip("hpe_data.render")
    mesh = head.head_mesh()
    S, scale = 220, 0.6
    c = np.array([(S - 1) / 2, (S - 1) / 2])

    def draw(R):  # orthographic (weak perspective), unlit texture so a rotated light cannot differ
        v = mesh.verts @ R.T
        ras = render.rasterize(np.concatenate([v[:, :2] * scale + c, v[:, 2:]], 1), mesh.faces, S, S, cull=True)
        img = np.where(ras.mask[..., None], render.interpolate(ras, mesh.colors), 0.5)
        return (img * 255).round().astype(np.uint8), (head.landmarks() @ R.T)[:, :2] * scale + c, ras.mask

    for (p, y, r), t in (((10.0, 50.0, 5.0), 35.0), ((-20.0, -65.0, 0.0), -40.0)):
        R = pose.to_matrix(p, y, r)
        img, lm, _ = draw(R)
        row = dict(width=S, height=S, landmarks=lm.reshape(-1), bbox=transforms.face_box(lm, S, S),
                   rotation=R.reshape(-1))
        moved = transforms.rotate_row(row, t, tuple(c))
        direct, lm2, mask2 = draw(pose.rz(np.radians(-t)) @ R)
        assert np.allclose(np.reshape(moved["rotation"], (3, 3)), pose.rz(np.radians(-t)) @ R, atol=1e-12)
        assert np.abs(np.reshape(moved["landmarks"], (68, 2)) - lm2).max() < 0.5
        warped = transforms.rotate_image(img, t, tuple(c), "constant")
        inner = cv2.erode(mask2.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        diff = np.abs(warped.astype(float) - direct)[inner].mean()
        wrong = np.abs(transforms.rotate_image(img, -t, tuple(c), "constant").astype(float) - direct)[inner].mean()
        assert diff < 20 and diff < 0.4 * wrong, (diff, wrong)


# ---------------------------------------------------------------- 300W-LP _Flip twins


def test_300wlp_flip_twins_match_flip_row(tmp_path):
    """In a synthetic 300W-LP set, every `_Flip` twin's labels equal flip_row of its original."""
    synth = pytest.importorskip("hpe_data.synth")
    importers = pytest.importorskip("hpe_data.importers")
    root = tmp_path / "300wlp"
    synth.synth("300w-lp", root, 4, 0)
    importers.import_dataset("300w-lp", root, tmp_path / "m.parquet")
    rows = {r["sample_id"]: r for r in manifests.read_rows(tmp_path / "m.parquet")}
    twins = [k for k in rows if "_Flip/" in k]
    assert twins
    for k in twins:
        orig = rows[k.replace("_Flip/", "/")]
        f = transforms.flip_row(orig)
        tw = rows[k]
        assert np.allclose(tw["rotation"], f["rotation"], atol=1e-4)
        assert (tw["yaw"], tw["pitch"], tw["roll"]) == pytest.approx((f["yaw"], f["pitch"], f["roll"]), abs=1e-3)
        ok = np.isfinite(np.reshape(tw["landmarks"], (68, 2))).all(1)
        assert np.allclose(np.reshape(tw["landmarks"], (68, 2))[ok], np.reshape(f["landmarks"], (68, 2))[ok],
                           atol=0.51)
        # and the twin's image is the mirror image of the original's
        a = imageio.read_rgb(manifests.resolve_image(tmp_path / "m.parquet", tw["image_path"])).astype(int)
        b = imageio.read_rgb(manifests.resolve_image(tmp_path / "m.parquet", orig["image_path"])).astype(int)
        assert np.abs(a - b[:, ::-1]).mean() < 3
