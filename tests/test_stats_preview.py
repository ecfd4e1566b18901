"""Pose statistics, the preview contact sheet and the drawing helpers."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import manifests
from hpe_data import draw, imageio, pose, preview, stats, transforms
from hpe_data import rotate as stage
from test_rotate import CENTRE, aflw_rows


@pytest.fixture(scope="module")
def real(refdata, tmp_path_factory):
    """The 16 real AFLW2000 faces, plus 5 of them again labelled as a second dataset."""
    base = tmp_path_factory.mktemp("stats")
    rows = aflw_rows(refdata)
    extra = [dict(r, sample_id=r["sample_id"] + "-b", dataset="other") for r in rows[:5]]
    extra[0].update(yaw=120.0, in_range=False, rotation=pose.to_matrix(rows[0]["pitch"], 120.0, rows[0]["roll"]))
    path = manifests.write(rows + extra, base / "in.parquet")
    return base, path, rows + extra


def test_stats_counts_match_the_manifest(real):
    base, path, rows = real
    res = stats.write_stats(path, base / "s1")
    names = {p.name for p in res["files"]}
    assert {"histograms.png", "yaw_pitch.png", "summary.md", "summary.json", "histograms.json"} <= names
    for p in res["files"]:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert imageio.read_rgb(p).shape[0] > 100
    s = json.loads((base / "s1" / "summary.json").read_text())["in"]
    assert s["all"]["count"] == 21 and s["all"]["with_pose"] == 21
    assert s["per_dataset"]["aflw2000"]["count"] == 16 and s["per_dataset"]["other"]["count"] == 5
    assert s["all"]["in_range"] == sum(r["in_range"] for r in rows) == 20
    assert s["all"]["in_range_recomputed"] == 20
    yaws = np.array([r["yaw"] for r in rows])
    assert s["all"]["yaw"]["max"] == pytest.approx(120.0) and s["all"]["yaw"]["min"] == pytest.approx(yaws.min())
    assert s["all"]["yaw"]["mean"] == pytest.approx(yaws.mean())
    assert s["all"]["yaw"]["p50"] == pytest.approx(np.median(yaws))
    h = json.loads((base / "s1" / "histograms.json").read_text())
    for k in ("yaw", "pitch", "roll"):
        assert sum(h["counts"]["in"][k]) == 21
    assert "| aflw2000 | 16 |" in res["markdown"]


def rolled_only(rows, thetas):
    """What the replaced project wrote: the image turned, yaw and pitch kept, roll shifted."""
    out = []
    for r, t in zip(rows, thetas):
        r2 = transforms.rotate_row(r, t, CENTRE)
        roll = r["roll"] - t
        r2.update(sample_id=r["sample_id"] + "@naive", yaw=r["yaw"], pitch=r["pitch"], roll=roll,
                  rotation=pose.to_matrix(r["pitch"], r["yaw"], roll).reshape(-1))
        out.append(r2)
    return out


def test_compare_exposes_a_roll_only_rotation(real, refdata):
    base, _, _ = real
    rows = aflw_rows(refdata)
    src = manifests.write(rows, base / "orig.parquet")
    thetas = [45.0 if i % 2 else -45.0 for i in range(len(rows))]
    good = manifests.write([transforms.rotate_row(r, t, CENTRE) for r, t in zip(rows, thetas)], base / "good.parquet")
    bad = manifests.write(rolled_only(rows, thetas), base / "naive.parquet")
    hg = stats.write_stats(src, base / "sg", compare=good)
    hb = stats.write_stats(src, base / "sb", compare=bad)
    assert (base / "sg" / "compare_histograms.png").exists()
    cg = json.loads((base / "sg" / "histograms.json").read_text())["counts"]
    cb = json.loads((base / "sb" / "histograms.json").read_text())["counts"]
    assert cg["orig"]["yaw"] != cg["good"]["yaw"]  # a correct rotation mixes yaw and pitch
    assert cg["orig"]["pitch"] != cg["good"]["pitch"]
    assert cb["orig"]["yaw"] == cb["naive"]["yaw"] and cb["orig"]["pitch"] == cb["naive"]["pitch"]
    assert cb["orig"]["roll"] != cb["naive"]["roll"]
    assert set(hg["summary"]) == {"orig", "good"} and set(hb["summary"]) == {"orig", "naive"}


def test_stats_cli(real):
    from cli.data import main

    base, path, _ = real
    run = CliRunner().invoke(main, ["stats", "--manifest", str(path), "--out", str(base / "cli"), "--compare",
                                    str(path)])
    assert run.exit_code == 0, run.output
    assert "| all | 21 | 21 | 20 | 20 |" in run.output
    assert (base / "cli" / "compare_histograms.png").exists()


# ---------------------------------------------------------------- drawing


@pytest.mark.parametrize("pyr, axis, sign", [
    ((0, 60, 0), (2, 0), -1),  # +yaw: the face direction (blue) points to image-left
    ((0, -60, 0), (2, 0), +1),
    ((30, 0, 0), (2, 1), -1),  # +pitch: it points up (image y is down)
    ((0, 0, 30), (1, 0), -1),  # +roll: top of the head to image-right, so head-down (green) leans left
    ((0, 0, 0), (0, 0), +1),  # identity: head x (red) points to image-right
])
def test_axis_endpoints_follow_the_convention(pyr, axis, sign):
    origin = np.array([100.0, 80.0])
    ends = draw.axis_endpoints(pose.to_matrix(*pyr), origin, 50.0)
    k, coord = axis
    assert np.sign(ends[k, coord] - origin[coord]) == sign
    assert np.linalg.norm(ends[k] - origin) <= 50.0 + 1e-9


def test_yaw60_nose_axis_endpoint():
    ends = draw.axis_endpoints(pose.to_matrix(0, 60, 0), (100, 100), 40.0)
    assert np.allclose(ends[2], [100 - 40 * np.sin(np.radians(60)), 100], atol=1e-9)  # foreshortened, leftwards


def test_drawn_landmark_styles():
    img = np.zeros((40, 60, 3), np.uint8)
    pts = [[10, 20], [30, 20], [50, 20]]
    draw.landmarks(img, pts, visible=[True, False, True], occluded=[False, False, True], radius=4)
    assert tuple(img[20, 10]) == draw.VISIBLE  # filled
    assert tuple(img[20, 30]) == (0, 0, 0) and img[16:25, 26:35].any()  # hollow ring
    assert tuple(img[20, 50]) == draw.OCCLUDED
    draw.landmarks(img, [[np.nan, 5.0]])  # unknown points are skipped


def test_pose_axes_are_drawn_in_their_colours():
    img = np.zeros((200, 200, 3), np.uint8)
    R = pose.to_matrix(0, 60, 0)
    draw.pose_axes(img, R, (100, 100), 60.0, thickness=1)
    ends = draw.axis_endpoints(R, (100, 100), 60.0)
    for k, color in ((0, draw.RED), (1, draw.GREEN), (2, draw.BLUE)):
        x, y = np.round((np.array([100, 100]) + ends[k]) / 2).astype(int)  # midway along each axis
        px = img[y - 1: y + 2, x - 1: x + 2].reshape(-1, 3).max(0).astype(float)  # anti-aliased: brightest nearby
        nearest = min(draw.AXIS_COLORS, key=lambda c: np.abs(px - c).sum())
        assert nearest == color and px.max() > 150


# ---------------------------------------------------------------- preview


def test_preview_sheet(real):
    base, path, rows = real
    sheet = preview.contact_sheet(path, base / "sheet.jpg", n=6, tile=128, sort="yaw")
    img = imageio.read_rgb(base / "sheet.jpg")
    assert sheet.grid == (2, 3)
    assert img.shape == (2 * (128 + preview.CAPTION_H), 3 * 128, 3) and sheet.size == (img.shape[1], img.shape[0])
    yaws = {r["sample_id"]: r["yaw"] for r in rows}
    picked = [yaws[s] for s in sheet.rows]
    assert picked == sorted(picked) and picked[0] == min(yaws.values()) and picked[-1] == max(yaws.values())
    assert not sheet.problems


def test_preview_random_and_unreadable(real, tmp_path):
    _, _, rows = real
    bad = [dict(rows[0], image_path=str(tmp_path / "gone.jpg"))] + rows[1:4]
    path = manifests.write(bad, tmp_path / "m.parquet")
    a = preview.contact_sheet(path, tmp_path / "a.png", n=16, seed=1, sort="random", tile=64)
    b = preview.contact_sheet(path, tmp_path / "b.png", n=16, seed=1, sort="random", tile=64)
    assert a.rows == b.rows and sorted(a.rows) == sorted(r["sample_id"] for r in bad)  # n capped at 4 rows
    assert a.grid == (2, 2) and len(a.problems) == 1 and "missing" in a.problems[0][1]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_preview_cli_on_rotated_faces(real, tmp_path):
    """The sheet of a rotated manifest; axes come from the stored matrix (a caption-only bug would not show)."""
    from cli.data import main

    _, path, _ = real
    stage.rotate(path, tmp_path / "r.parquet", tmp_path / "img", angles=[30.0])
    run = CliRunner().invoke(main, ["preview", "--manifest", str(tmp_path / "r.parquet"), "--out",
                                    str(tmp_path / "sheet.png"), "--n", "9", "--tile", "96"])
    assert run.exit_code == 0, run.output
    assert "3x3 grid" in run.output
    assert imageio.read_rgb(tmp_path / "sheet.png").shape == (3 * (96 + preview.CAPTION_H), 3 * 96, 3)
