"""Procedural head, its landmarks, and the synthetic datasets in the real on-disk formats."""
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io as sio
from click.testing import CliRunner

from hpe_data import head, landmarks, pose, render, synth
from cli.data_synth import synth as synth_cmd

# ------------------------------------------------------------------------------------------------ head


@pytest.fixture(scope="module")
def mesh():
    return head.head_mesh()


def test_mesh_is_closed_and_outward(mesh):
    f = np.sort(mesh.faces, axis=1)
    edges = np.r_[f[:, [0, 1]], f[:, [1, 2]], f[:, [0, 2]]]
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # every edge shared by exactly two faces
    v = mesh.verts
    vol = np.einsum("ij,ij->i", v[mesh.faces[:, 0]], np.cross(v[mesh.faces[:, 1]], v[mesh.faces[:, 2]])).sum() / 6
    assert vol > 1e6  # mm^3, outward winding (a 150 mm head is ~2e6 mm^3 plus the neck)
    width = np.ptp(v[mesh.follow == 1, 0])
    assert 140 < width < 200  # ears and hair included
    assert mesh.colors.shape == v.shape and mesh.normals.shape == v.shape


def test_nose_tip_is_the_nearest_point_and_on_the_surface(mesh):
    L = head.TEMPLATE_68
    assert L[:, 2].argmin() == 30
    skull = mesh.verts[mesh.follow == 1]
    tip = skull[skull[:, 2].argmin()]
    assert np.linalg.norm(tip - L[30]) < 6  # the mesh's foremost point is the nose tip
    assert L[30, 2] < L[27:30, 2].min() - 8  # a real tip protruding from the bridge
    # every landmark lies on the surface: within the grid spacing of a vertex
    d = np.linalg.norm(L[:, None] - skull[None], axis=2).min(1)
    assert d.max() < 2.5


def test_template_semantics_follow_ibug_order():
    L = head.TEMPLATE_68
    # frontal: subject's right (image-left, x < 0) first
    assert L[0, 0] < L[8, 0] < L[16, 0] and L[8, 1] == L[:17, 1].max()
    assert L[36:42, 0].max() < 0 < L[42:48, 0].min() and L[17:22, 0].max() < 0 < L[22:27, 0].min()
    assert L[36, 0] < L[39, 0] and L[42, 0] < L[45, 0]  # outer -> inner, inner -> outer
    assert L[27:31, 1].tolist() == sorted(L[27:31, 1].tolist())  # bridge runs down to the tip
    assert L[48, 0] < L[51, 0] < L[54, 0] and L[57, 1] > L[51, 1]
    assert L[17:27, 1].max() < L[36:48, 1].min() < L[31:36, 1].min() and L[48:68, 1].min() > L[33, 1]
    # the head is symmetric, so mirroring x and re-indexing with the documented flip permutation is identity
    M = L * [-1, 1, 1]
    assert np.allclose(M[landmarks.FLIP_PERM], L, atol=1e-6)


def _project(R, p):
    return (np.asarray(p) @ R.T)[..., :2]  # orthographic: image x right, y down


def test_pose_conventions_on_the_posed_head():
    L = head.TEMPLATE_68
    nose0 = _project(np.eye(3), L[30])
    assert _project(pose.to_matrix(0, 30, 0), L[30])[0] < nose0[0] - 10  # +yaw: nose to image-left
    assert _project(pose.to_matrix(0, -30, 0), L[30])[0] > nose0[0] + 10
    assert _project(pose.to_matrix(25, 0, 0), L[30])[1] < nose0[1] - 5  # +pitch: face looks up
    top = np.array([0.0, -120.0, 0.0])  # top of the head
    assert _project(pose.to_matrix(0, 0, 20), top)[0] > 20  # +roll: top of the head to image-right


def test_self_occlusion_sides():
    assert not head.self_occluded(np.eye(3)).any()
    hid = head.self_occluded(pose.to_matrix(0, 80, 0))  # nose far to image-left: the subject's right turns away
    assert hid[0:4].all() and not hid[13:17].any() and hid[36:42].sum() > hid[42:48].sum()
    hid = head.self_occluded(pose.to_matrix(0, -80, 0))
    assert hid[13:17].all() and not hid[0:4].any()
    hid = head.self_occluded(pose.to_matrix(0, 0, 0) @ pose.rx(np.pi))  # seen from behind-above
    assert hid.sum() > 60


def test_visible_points_against_a_hand_made_zbuffer():
    depth = np.full((10, 10), np.inf, np.float32)
    depth[:, :5] = 10.0
    ras = render.Raster(np.zeros((10, 10), np.int32), np.zeros((10, 10, 3), np.float32), depth, np.zeros((1, 3), int))
    pts = np.array([[2.0, 2.0], [2.0, 2.0], [8.0, 3.0], [4.5, 3.0]])
    vis = head.visible_points(pts, [11.0, 30.0, 50.0, 50.0], ras, tol=4.0)
    assert vis.tolist() == [True, False, True, True]  # within tol, behind, empty, next to the edge


# ------------------------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def aflw(tmp_path_factory):
    out = tmp_path_factory.mktemp("aflw")
    return out, synth.synth("aflw2000", out, 10, seed=3, progress=False)


@pytest.fixture(scope="module")
def w300(tmp_path_factory):
    out = tmp_path_factory.mktemp("w300")
    return out, synth.synth("300w-lp", out, 5, seed=4, progress=False)


@pytest.fixture(scope="module")
def biwi(tmp_path_factory):
    out = tmp_path_factory.mktemp("biwi")
    return out, synth.synth("biwi", out, 8, seed=5, progress=False)


def _layout(m):
    return {k: (v.dtype, v.shape) for k, v in m.items() if not k.startswith("__")}


def test_aflw_mat_layout_matches_real_file(aflw, refdata):
    out, recs = aflw
    real = _layout(sio.loadmat(refdata / "aflw2000/image00050.mat"))
    for r in recs:
        m = sio.loadmat(out / (r["image"][:-4] + ".mat"))
        mine = _layout(m)
        assert set(mine) == set(real)
        assert all(mine[k] == real[k] for k in mine), {k: (mine[k], real[k]) for k in mine if mine[k] != real[k]}
        ang = m["Pose_Para"][0, :3].astype(np.float64)
        assert np.allclose(ang, np.radians([r["pitch"], r["yaw"], r["roll"]]), atol=1e-6, rtol=0)
        assert np.allclose(pose.to_matrix(r["pitch"], r["yaw"], r["roll"]), r["rotation"], atol=1e-9)
        # 1-based MATLAB pixels
        assert np.allclose(m["pt3d_68"][:2].T - 1, r["landmarks"], atol=1e-3)
        img = cv2.imread(str(out / r["image"]))
        assert img.shape == (450, 450, 3)


def test_aflw_sentinels_exactly_for_invisible_points(aflw):
    out, recs = aflw
    n_hidden = 0
    for r in recs:
        pt = sio.loadmat(out / (r["image"][:-4] + ".mat"))["pt2d"].T
        vis = np.array(r["visible_21"])
        assert (pt[~vis] == [-1, 452]).all()
        assert np.allclose(pt[vis] - 1, np.array(r["pt2d_21"])[vis], atol=1e-9)
        assert ((pt[vis] >= 1) & (pt[vis] <= 450)).all()
        n_hidden += (~vis).sum()
        if abs(r["yaw"]) > 60:  # the far ear lobe is hidden at strong yaw; which one follows the sign
            far = 12 if r["yaw"] > 0 else 16
            assert not vis[far]
    assert n_hidden > 0


def _spread(shapes_and_R, transpose=False):
    S = []
    for X, R in shapes_and_R:
        X = X.astype(np.float64).T.copy()
        X[:, 2] *= -1  # z towards the viewer -> camera z
        X -= X.mean(0)
        Y = X @ (R.T if transpose else R)  # rows: R.T @ x (de-rotate)
        S.append(Y / np.linalg.norm(Y))
    S = np.array(S)
    return float(np.linalg.norm(S - S.mean(0), axis=(1, 2)).mean())


def test_convention_self_check_synthetic_and_real(aflw, refdata):
    out, recs = aflw
    pairs = []
    for r in recs:
        m = sio.loadmat(out / (r["image"][:-4] + ".mat"))
        pairs.append((m["pt3d_68"], pose.to_matrix(*np.degrees(m["Pose_Para"][0, :3].astype(np.float64)))))
    assert np.ptp([r["yaw"] for r in recs]) > 60  # the samples really differ in pose
    assert _spread(pairs) < 0.02
    assert _spread(pairs, transpose=True) > 0.3
    real = []
    for f in sorted((refdata / "aflw2000").glob("*.mat")):
        m = sio.loadmat(f)
        real.append((m["pt3d_68"], pose.to_matrix(*np.degrees(m["Pose_Para"][0, :3].astype(np.float64)))))
    assert len(real) == 16
    assert _spread(real) <= 0.09 < _spread(real, transpose=True)


def test_300w_layout_flip_twins_and_pts(w300, refdata):
    out, recs = w300
    real = _layout(sio.loadmat(refdata / "300w_lp/IBUG_image_008_1_0.mat"))
    assert len(recs) == 10
    by_id = {r["sample_id"]: r for r in recs}
    for r in recs:
        p = out / r["image"]
        m = sio.loadmat(p.with_suffix(".mat"))
        mine = _layout(m)
        assert set(mine) == set(real) and all(mine[k] == real[k] for k in mine)
        assert np.allclose(m["Pose_Para"][0, :3], np.radians([r["pitch"], r["yaw"], r["roll"]]), atol=1e-6, rtol=0)
        assert np.allclose(m["pt2d"].T - 1, r["landmarks"], atol=1e-9)
        sub = p.parent.name
        assert sub.removesuffix("_Flip") in synth.SUBSETS and p.name.startswith(sub.removesuffix("_Flip") + "_")
        if r["flipped"]:
            twin = by_id[r["sample_id"].replace("_Flip/", "/")]
            assert np.isclose(r["pitch"], twin["pitch"]) and np.isclose(r["yaw"], -twin["yaw"])
            assert np.isclose(r["roll"], -twin["roll"])
            assert np.allclose(r["landmarks"], landmarks.flip_points(twin["landmarks"], 450))
            a = cv2.blur(cv2.imread(str(p)), (5, 5)).astype(float)
            b = cv2.imread(str(out / twin["image"]))
            mirrored, same = cv2.blur(b[:, ::-1].copy(), (5, 5)), cv2.blur(b, (5, 5))
            # same picture mirrored, up to JPEG (grain averaged out)
            assert np.abs(a - mirrored).mean() < 2 < np.abs(a - same).mean()
            assert not (p.parent.parent / "landmarks" / sub).exists()
        else:
            pts = sio.loadmat(out / "300W_LP/landmarks" / sub / (p.stem + "_pts.mat"))
            assert pts["pts_2d"].shape == (68, 2) and pts["pts_3d"].shape == (68, 2)
            assert np.allclose(pts["pts_2d"] - 1, r["landmarks"])


def test_rendered_nose_tip_matches_label_and_pose_direction():
    """The foremost rendered pixel of the face is the labelled nose tip; it moves left for +yaw, up for +pitch."""
    tips = {}
    for name, ang in {"front": (0, 0, 0), "yaw": (0, 35, 0), "pitch": (15, 0, 0)}.items():
        R = pose.to_matrix(*ang)
        inst = synth.HeadInstance(head.DEFAULT, R, np.zeros(3), np.eye(3))
        cam = synth.Camera(None, 1.5, (225.0, 225.0))
        bg = np.full((450, 450, 3), 0.5, np.float32)
        img, faces = synth.render_scene([inst], cam, bg, synth.Light(np.array([0, 0, -1.0])))
        m = head.head_mesh()
        v = synth._pose_mesh(m, inst)[0]
        xy, z = cam.project(v)
        ras = render.rasterize(np.c_[xy, z], m.faces, 450, 450, cull=True)
        yx = np.unravel_index(np.argmin(ras.depth), ras.depth.shape)
        # frontal: the foremost point is the tip; turned, it slides a little along the nose
        assert np.hypot(*(faces[0].lm[30] - yx[::-1])) < (2 if name == "front" else 6)
        assert np.abs(img - 0.5).max(-1)[yx] > 0.05  # the head was drawn there
        tips[name] = np.array(yx[::-1], float)
    assert tips["yaw"][0] < tips["front"][0] - 15
    assert tips["pitch"][1] < tips["front"][1] - 4


def _read_floats(p):
    return [float(t) for t in Path(p).read_text().split()]


def _blank_lines(p):
    lines = Path(p).read_text().splitlines()
    return len(lines), [i for i, ln in enumerate(lines) if not ln.strip()]


def test_biwi_layout_and_geometry(biwi, refdata):
    out, recs = biwi
    assert {r["index"] for r in recs} == set(range(8))
    ref = refdata / "biwi_reconstructed/12"
    for r in recs:
        seq = out / "hpdb" / r["sequence"]
        for name in ("rgb.cal", "depth.cal"):
            assert _blank_lines(seq / name) == _blank_lines(ref / name) == (13, [3, 5, 9, 11])
        pose_file = seq / f"frame_{r['frame']:05d}_pose.txt"
        assert _blank_lines(pose_file) == _blank_lines(ref / "frame_00003_pose.txt")
        vals = _read_floats(seq / "rgb.cal")
        K, R_ext, T = np.array(vals[:9]).reshape(3, 3), np.array(vals[13:22]).reshape(3, 3), np.array(vals[22:25])
        assert vals[25:] == [640, 480] and vals[9:13] == [0, 0, 0, 0]
        dvals = _read_floats(seq / "depth.cal")
        assert dvals[13:22] == np.eye(3).ravel().tolist() and dvals[22:25] == [0, 0, 0]
        assert abs(K[0, 0] - 517) < 5 and abs(K[0, 2] - 320) < 5 and abs(T[0] + 25) < 3
        assert not np.allclose(R_ext, np.eye(3)) and np.allclose(R_ext @ R_ext.T, np.eye(3), atol=1e-6)
        suffix = "" if r["face"] == 0 else f"_{r['face']}"
        pv = _read_floats(seq / f"frame_{r['frame']:05d}_pose{suffix}.txt")
        R_file, t = np.array(pv[:9]).reshape(3, 3), np.array(pv[9:])
        assert np.allclose(pose.to_euler(R_file), (r["pitch"], r["yaw"], r["roll"]), atol=1e-5)
        assert 550 < t[2] < 1700
        # the head centre in the RGB image with p_rgb = R p + T and the landmarks around it
        c = K @ (R_ext @ t + T)
        c = c[:2] / c[2]
        lm = np.array(r["landmarks"])
        assert np.allclose(R_ext @ t + T, r["translation_rgb"], atol=1e-6)
        assert np.abs(lm.mean(0) - c).max() < 0.8 * np.ptp(lm, 0).max() + 5
        # the projected landmarks = K (R_rgb X + t_rgb)
        X = head.landmarks(head.HeadParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in r["head"].items()}))
        P = (X @ (R_ext @ R_file).T + (R_ext @ t + T)) @ K.T
        assert np.allclose(P[:, :2] / P[:, 2:], lm, atol=1e-3)
        img = cv2.imread(str(out / r["image"]))
        assert img.shape == (480, 640, 3)
    frames = {}
    for r in recs:
        frames.setdefault(r["image"], []).append(r["face"])
    for img, fs in frames.items():
        stem = out / img.replace("_rgb.png", "")
        extra = sorted(Path(stem).parent.glob(Path(stem).name + "_pose_*.txt"))
        assert len(extra) == len(fs) - 1


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["aflw2000", "biwi"])
def test_deterministic_and_worker_independent(fmt, tmp_path):
    synth.synth(fmt, tmp_path / "a", 3, seed=11, progress=False)
    synth.synth(fmt, tmp_path / "b", 3, seed=11, progress=False)
    synth.synth(fmt, tmp_path / "c", 3, seed=11, workers=2, progress=False)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db == dc and len(da) >= 4
    synth.synth(fmt, tmp_path / "d", 3, seed=12, progress=False)
    assert _digest(tmp_path / "d") != da
    assert not list(tmp_path.rglob("*.tmp"))


def test_truth_json_and_sizes(aflw):
    out, recs = aflw
    assert json.loads((out / "truth.json").read_text()) == recs
    widths = [np.ptp(np.array(r["landmarks"])[:, 0]) for r in recs]
    assert min(widths) < 150 and max(widths) > 60
    for r in recs:
        lm = np.array(r["landmarks"])
        assert np.allclose(r["bbox"], [*lm.min(0), *lm.max(0)])


def test_background_is_never_flat():
    for i in range(5):
        bg = synth.background(np.random.default_rng(i), 60, 80)
        assert bg.std(axis=(0, 1)).min() > 0.005


def test_cli_command(tmp_path):
    res = CliRunner().invoke(synth_cmd, ["--format", "300w-lp", "--out", str(tmp_path), "--count", "1", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "2 images" in res.output
    assert (tmp_path / "truth.json").exists() and len(list((tmp_path / "300W_LP").rglob("*.jpg"))) == 2
    bad = CliRunner().invoke(synth_cmd, ["--format", "xyz", "--out", str(tmp_path), "--count", "1"])
    assert bad.exit_code != 0
