"""BIWI importer: the reconstructed sequence-12 frame-3 files of refdata (symlinked, never copied)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import manifests
from cli.data import main as cli
from hpe_data import pose
from hpe_data.importers import import_dataset
from hpe_data.importers.biwi import SEQUENCE_SUBJECT, biwi_pose, project, read_cal, read_pose
from hpe_data.runner import StageError

DIRS = ("R*p+T", "R^T*(p-T)")


def numbers(path: Path) -> np.ndarray:
    return np.array([float(t) for t in path.read_text().split()])


@pytest.fixture
def seq12(refdata):
    return refdata / "biwi_reconstructed" / "12"


def make_root(seq12: Path, root: Path, nested: bool = False, png: bool = True) -> Path:
    """A BIWI root with sequence 12 (symlinked .cal/.txt) and a dummy 640x480 frame image."""
    folder = root / ("hpdb" if nested else "") / "12"
    folder.mkdir(parents=True)
    for f in seq12.iterdir():
        os.symlink(f, folder / f.name)
    if png:
        cv2.imwrite(str(folder / "frame_00003_rgb.png"), np.full((480, 640, 3), 90, np.uint8))
    return folder


def run_cli(*args):
    return CliRunner().invoke(cli, ["import", *map(str, args)], catch_exceptions=False)


def test_depth_frame_angles(seq12):
    R, t = read_pose(seq12 / "frame_00003_pose.txt")
    p, y, r = pose.to_euler(R)
    np.testing.assert_allclose([y, p, r], [9.33, -0.41, -6.39], atol=0.01)  # pitch is -0.405 exactly
    np.testing.assert_allclose(t, [43.4019, -30.7038, 906.864])


@pytest.mark.parametrize("direction,uv", [("R*p+T", (336.0, 233.9)), ("R^T*(p-T)", (353.3, 212.3))])
def test_head_centre_projection(seq12, direction, uv):
    R, t = read_pose(seq12 / "frame_00003_pose.txt")
    cal = read_cal(seq12 / "rgb.cal")
    assert cal.size == (640, 480)
    _, t_rgb = biwi_pose(R, t, cal.R, cal.T, direction)
    np.testing.assert_allclose(project(cal.K, t_rgb)[0], uv, atol=0.1)


def test_biwi_pose_closed_form():
    """R*p+T maps every head point p = R_file x + t the same way as the pose it returns; the other reading inverts it."""
    rng = np.random.default_rng(3)
    R_file, R_ext = pose.to_matrix(*rng.uniform(-60, 60, 3)), pose.to_matrix(*rng.uniform(-3, 3, 3))
    t, T, x = rng.uniform(-200, 900, 3), rng.uniform(-30, 30, 3), rng.uniform(-80, 80, 3)
    p = R_file @ x + t
    R1, t1 = biwi_pose(R_file, t, R_ext, T, "R*p+T")
    np.testing.assert_allclose(R1 @ x + t1, R_ext @ p + T, atol=1e-9)
    R2, t2 = biwi_pose(R_file, t, R_ext, T, "R^T*(p-T)")
    np.testing.assert_allclose(R2 @ x + t2, R_ext.T @ (p - T), atol=1e-9)
    with pytest.raises(ValueError):
        biwi_pose(R_file, t, R_ext, T, "R*p-T")


def test_sequence_subjects():
    assert sorted(SEQUENCE_SUBJECT) == list(range(1, 25))
    assert len(set(SEQUENCE_SUBJECT.values())) == 20
    for a, b in ((2, 21), (3, 15), (5, 18), (7, 22)):  # people recorded twice
        assert SEQUENCE_SUBJECT[a] == SEQUENCE_SUBJECT[b]
    assert SEQUENCE_SUBJECT[12] == "M06" and SEQUENCE_SUBJECT[24] == "M14"


@pytest.mark.parametrize("direction", DIRS)
def test_import_row(seq12, tmp_path, direction):
    make_root(seq12, tmp_path / "biwi")
    out = tmp_path / "b.parquet"
    res = run_cli("--dataset", "biwi", "--root", tmp_path / "biwi", "--out", out, "--depth-to-rgb", direction,
                  "--biwi-box", "head")
    assert res.exit_code == 0, res.output
    (r,) = manifests.read_rows(out)
    # independent reading of the files: plain token lists
    v = numbers(seq12 / "frame_00003_pose.txt")
    c = numbers(seq12 / "rgb.cal")
    R_file, t = v[:9].reshape(3, 3), v[9:]
    K, R_ext, T = c[:9].reshape(3, 3), c[13:22].reshape(3, 3), c[22:25]
    R_rgb = R_ext @ R_file if direction == "R*p+T" else R_ext.T @ R_file
    t_rgb = R_ext @ t + T if direction == "R*p+T" else R_ext.T @ (t - T)
    assert r["sample_id"] == "biwi/12/00003" and r["sequence"] == "12" and r["frame"] == 3
    assert r["subject"] == "M06" and r["dataset"] == "biwi" and r["depth_to_rgb"] == direction
    assert (r["width"], r["height"]) == (640, 480)
    R = np.asarray(r["rotation"]).reshape(3, 3)
    np.testing.assert_allclose(R, R_rgb, atol=2e-6)
    assert pose.is_rotation(R)
    np.testing.assert_allclose([r["pitch"], r["yaw"], r["roll"]], [float(a) for a in pose.to_euler(R_rgb)], atol=1e-3)
    np.testing.assert_allclose(r["translation"], t_rgb, atol=1e-3)
    np.testing.assert_allclose(r["camera"], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    # box: 200 mm square around the head centre at its depth
    u, w = K[0, 0] * t_rgb[0] / t_rgb[2] + K[0, 2], K[1, 1] * t_rgb[1] / t_rgb[2] + K[1, 2]
    half = K[0, 0] * 100 / t_rgb[2]
    np.testing.assert_allclose(r["bbox"], [u - half, w - half, u + half, w + half], atol=1e-3)
    # projected template landmarks: a face, upright, inside the head box, all visible at this near-frontal pose
    assert r["landmarks_source"] == "projected" and r["landmarks_3d"] is None
    lm = np.asarray(r["landmarks"]).reshape(68, 2)
    eyes, nose, mouth = lm[36:48, 1].mean(), lm[30, 1], lm[48:60, 1].mean()
    assert eyes < nose < mouth
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # subject's right eye on image-left
    assert abs(lm[:, 0].mean() - u) < half / 2 and abs(lm[:, 1].mean() - w) < half
    assert np.asarray(r["landmark_visible"]).all()


def test_template_projection(seq12, tmp_path):
    head = pytest.importorskip("hpe_data.head")
    make_root(seq12, tmp_path / "biwi", nested=True)  # hpdb/NN layout
    out = tmp_path / "b.parquet"
    import_dataset("biwi", tmp_path / "biwi", out)
    (r,) = manifests.read_rows(out)
    R, t = np.asarray(r["rotation"]).reshape(3, 3), np.asarray(r["translation"])
    fx, fy, cx, cy = r["camera"]
    X = np.asarray(head.TEMPLATE_68) @ R.T + t
    np.testing.assert_allclose(np.asarray(r["landmarks"]).reshape(68, 2),
                               np.stack([fx * X[:, 0] / X[:, 2] + cx, fy * X[:, 1] / X[:, 2] + cy], 1), atol=1e-3)
    out2 = tmp_path / "c.parquet"
    import_dataset("biwi", tmp_path / "biwi", out2, biwi_box="landmarks")
    (r2,) = manifests.read_rows(out2)
    lm = np.asarray(r2["landmarks"]).reshape(68, 2)
    np.testing.assert_allclose(r2["bbox"], [*lm.min(0), *lm.max(0)], atol=1e-3)


def test_extra_heads_and_whitespace(seq12, tmp_path):
    folder = make_root(seq12, tmp_path / "biwi")
    v = numbers(seq12 / "frame_00003_pose.txt")
    R2 = pose.to_matrix(10.0, -40.0, 5.0)
    # a second head 150 mm to the left, written with tabs, blank lines and trailing spaces
    text = "\n\n" + "\n".join("\t".join(f"{x:.9f}" for x in row) + "   " for row in R2) + "\n\n\n"
    text += " ".join(f"{x}" for x in v[9:] - [150, 0, 0]) + "  \n\n"
    (folder / "frame_00003_pose_1.txt").write_text(text)
    out = tmp_path / "b.parquet"
    import_dataset("biwi", tmp_path / "biwi", out)
    rows = {r["sample_id"]: r for r in manifests.read_rows(out)}
    assert sorted(rows) == ["biwi/12/00003", "biwi/12/00003#1"]
    a, b = rows["biwi/12/00003"], rows["biwi/12/00003#1"]
    assert a["image_path"] == b["image_path"] and b["frame"] == 3
    c = numbers(seq12 / "rgb.cal")
    np.testing.assert_allclose(np.asarray(b["rotation"]).reshape(3, 3), c[13:22].reshape(3, 3) @ R2, atol=1e-6)
    assert b["bbox"][0] < a["bbox"][0]


def _bad_root(seq12: Path, root: Path) -> dict[str, str]:
    """Sequence 12 good; other sequences each with one bad file. Returns file name -> reason word."""
    make_root(seq12, root)
    bad = {}
    pose_txt = (seq12 / "frame_00003_pose.txt").read_text()
    cal_txt = (seq12 / "rgb.cal").read_text()

    def seq(n: str, pose_text=pose_txt, cal_text=cal_txt, frame="00003", png=True):
        d = root / n
        d.mkdir()
        (d / "rgb.cal").write_text(cal_text)
        (d / f"frame_{frame}_pose.txt").write_text(pose_text)
        if png:
            cv2.imwrite(str(d / f"frame_{frame}_rgb.png"), np.zeros((480, 640, 3), np.uint8))
        return d

    seq("01", pose_text=" ".join(pose_txt.split()[:11]))
    bad["01/frame_00003_pose.txt"] = "expected 12 numbers"
    seq("02", pose_text=pose_txt.replace("906.864", "nan"))
    bad["02/frame_00003_pose.txt"] = "non-finite"
    seq("03", pose_text=pose_txt.replace("0.993882", "zebra"))
    bad["03/frame_00003_pose.txt"] = "not a number"
    seq("04", pose_text=pose_txt.replace("0.993882", "0.5"))
    bad["04/frame_00003_pose.txt"] = "not a rotation"
    seq("05", cal_text=cal_txt.replace("640 480", "640"))
    bad["05/rgb.cal"] = "expected 27 numbers"
    seq("06", png=False)
    bad["06/frame_00003_rgb.png"] = "missing"
    d = seq("07")
    (d / "frame_00003_rgb.png").write_bytes((d / "frame_00003_rgb.png").read_bytes()[:-20])
    bad["07/frame_00003_rgb.png"] = "truncated"
    d = seq("08")
    cv2.imwrite(str(d / "frame_00003_rgb.png"), np.zeros((240, 320, 3), np.uint8))
    bad["08/frame_00003_rgb.png"] = "640x480"
    return bad


def test_bad_inputs(seq12, tmp_path):
    root = tmp_path / "biwi"
    bad = _bad_root(seq12, root)
    out = tmp_path / "b.parquet"
    res = run_cli("--dataset", "biwi", "--root", root, "--out", out)
    assert res.exit_code == 0, res.output
    assert [r["sample_id"] for r in manifests.read_rows(out)] == ["biwi/12/00003"]
    with open(str(out) + ".errors.csv") as f:
        errors = {os.path.relpath(e["path"], root): e["reason"] for e in csv.DictReader(f)}
    assert sorted(errors) == sorted(bad)
    for name, word in bad.items():
        assert word in errors[name], (name, errors[name])
    res = run_cli("--dataset", "biwi", "--root", root, "--out", tmp_path / "s.parquet", "--strict")
    assert res.exit_code != 0


def test_bad_extra_head_keeps_main_row(seq12, tmp_path):
    folder = make_root(seq12, tmp_path / "biwi")
    (folder / "frame_00003_pose_1.txt").write_text("1 0 0\n0 1 0\n0 0 1\n\n1 2\n")
    out = tmp_path / "b.parquet"
    r = import_dataset("biwi", tmp_path / "biwi", out)
    assert [x["sample_id"] for x in manifests.read_rows(out)] == ["biwi/12/00003"]
    (e,) = r.errors
    assert e[0].endswith("frame_00003_pose_1.txt") and "expected 12 numbers" in e[1]


def test_read_errors_name_file(tmp_path):
    p = tmp_path / "x_pose.txt"
    with pytest.raises(StageError, match="missing") as e:
        read_pose(p)
    assert e.value.path == str(p)
    p.write_text("1 0 0 0 1 0 0 0 1 1 2 inf")
    with pytest.raises(StageError, match="non-finite"):
        read_pose(p)


def test_face_alignment_without_weights_is_a_usage_error(seq12, tmp_path, monkeypatch):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    make_root(seq12, tmp_path / "biwi")
    res = run_cli("--dataset", "biwi", "--root", tmp_path / "biwi", "--out", tmp_path / "b.parquet",
                  "--landmarks", "face-alignment")
    assert res.exit_code == 2 and "2DFAN4-11f355bf06.pth.tar" in res.output
    assert not (tmp_path / "b.parquet").exists()


def test_synth_round_trip(tmp_path):
    """Generator truth -> BIWI files -> importer: the RGB-frame poses and head centres come back."""
    synth = pytest.importorskip("hpe_data.synth")
    recs = synth.synth("biwi", tmp_path / "ds", 6, 0, progress=False)
    out = tmp_path / "b.parquet"
    res = run_cli("--dataset", "biwi", "--root", tmp_path / "ds", "--out", out)
    assert res.exit_code == 0, res.output
    rows = {r["sample_id"]: r for r in manifests.read_rows(out)}
    assert len(rows) == len(recs)
    for rec in recs:
        sid = f"biwi/{rec['sequence']}/{rec['frame']:05d}" + (f"#{rec['face']}" if rec["face"] else "")
        r = rows[sid]
        want = [float(a) for a in pose.to_euler(np.asarray(rec["rotation_rgb"]))]
        np.testing.assert_allclose([r["pitch"], r["yaw"], r["roll"]], want, atol=1e-4)
        np.testing.assert_allclose(r["translation"], rec["translation_rgb"], atol=1e-3)
        assert manifests.resolve_image(out, r["image_path"]).resolve() == (tmp_path / "ds" / rec["image"]).resolve()
        if rec["face"] == 0:
            assert r["subject"] == rec["subject"]


def test_default_box_is_the_landmark_box(seq12, tmp_path):
    """By default BIWI rows get the box definition of 300W-LP/AFLW2000 rows: the box of the 68 landmarks."""
    make_root(seq12, tmp_path / "biwi")
    out = tmp_path / "b.parquet"
    res = run_cli("--dataset", "biwi", "--root", tmp_path / "biwi", "--out", out)
    assert res.exit_code == 0, res.output
    (r,) = manifests.read_rows(out)
    lm = np.asarray(r["landmarks"], dtype=np.float64).reshape(68, 2)
    np.testing.assert_allclose(r["bbox"], [lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], atol=1e-3)
