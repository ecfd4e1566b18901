"""End-to-end evaluation report on a small synthetic manifest with a fake predictor.

The fake predictor returns the true poses perturbed by known rotations (so every Euler and geodesic error is
known in closed form), drops faces, adds a false positive and a below-threshold detection; the report numbers
must equal the hand-computed values and agree with faces.parquet.
"""
import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

import manifests
from hpe_data import pose
from hpe_data.imageio import write_rgb
from hpe_model.evaluation import evaluate

SIZE = 64


def _rot(axis, deg):
    return Rotation.from_euler(axis, deg, degrees=True).as_matrix()


# image index, manifest (0/1), sample id, (pitch, yaw, roll) label, box, perturbation, extras
# perturbation: ("left", R) -> pred = R @ R_gt ; ("right", R) -> pred = R_gt @ R ; None -> not detected
# expected plain (yaw, pitch, roll) error and geodesic in the last two fields.
FACES = [
    (0, 0, "a", (0, 0, 10), [10, 10, 50, 50], ("left", _rot("z", 5)), {}, (0, 0, 5), 5),  # camera-axis roll
    (1, 0, "b", (10, 20, 30), [8, 8, 56, 56], ("left", _rot("x", -8)), {"mask": "surgical"}, (0, 8, 0), 8),
    (2, 0, "c", (-15, 40, -5), [8, 8, 56, 56], ("right", _rot("z", -6)), {"rotate_deg": 30.0}, (0, 0, 6), 6),
    (3, 0, "d", (0, -60, 7), [8, 8, 56, 56], ("left", _rot("y", 4)), {}, (4, 0, 0), 4),
    (7, 0, "i", (0, 120, 0), [8, 8, 56, 56], ("left", np.eye(3)), {}, (0, 0, 0), 0),  # out of range
    (4, 1, "e", (0, 0, 178), [8, 8, 56, 56], ("right", _rot("z", 4)), {}, (0, 0, 356), 4),  # roll 178 -> -178
    (5, 1, "f", (20, 30, -10), [8, 8, 40, 40], None, {}, None, None),  # dropped
    (6, 1, "g", (5, 5, 5), [2, 2, 30, 30], ("left", np.eye(3)), {}, (0, 0, 0), 0),
    (6, 1, "h", (-20, 70, 0), [34, 34, 62, 62], "low", {}, None, None),  # detection at score 0.3 only
]
FALSE_POSITIVE = (5, [44, 44, 60, 60], 0.8)  # image 5


def _image(idx):
    return np.full((SIZE, SIZE, 3), 10 + 20 * idx, np.uint8)


class FakePredictor:
    """Knows the answers per image (the image index is encoded in its grey level)."""

    def __init__(self):
        self.calls = 0
        self.dets = {}
        for idx, _, _, (p, y, r), box, pert, *_ in FACES:
            R = pose.to_matrix(p, y, r)
            d = self.dets.setdefault(idx, [])
            if pert is None:
                continue
            if pert == "low":
                d.append((np.array(box, float), R, 0.3))
                continue
            side, dR = pert
            Rp = dR @ R if side == "left" else R @ dR
            b = np.array(box, float) + (np.array([4, 0, 4, 0]) if idx == 0 else 0)  # face a: IoU 1440/1760
            d.append((b, Rp, 0.9))
        i, b, s = FALSE_POSITIVE
        self.dets[i].append((np.array(b, float), np.eye(3), s))

    def predict(self, images):
        self.calls += 1
        out = []
        for img in images:
            idx = (int(img[0, 0, 0]) - 10) // 20
            scale = img.shape[1] / SIZE
            d = self.dets[idx]
            out.append({
                "boxes": np.array([x[0] * scale for x in d]).reshape(-1, 4),
                "scores": np.array([x[2] for x in d]),
                "rotation": np.array([x[1] for x in d]).reshape(-1, 3, 3),
                "landmarks5": np.zeros((len(d), 5, 2)) + 20 * scale,
            })
        return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    rows = [[], []]
    for idx, m, sid, (p, y, r), box, _, extra, *_ in FACES:
        path = root / "imgs" / f"{idx}.png"
        if not path.exists():
            write_rgb(path, _image(idx))
        row = {"sample_id": sid, "image_path": f"imgs/{idx}.png", "dataset": ["aflw2000", "biwi"][m],
               "subject": None, "width": SIZE, "height": SIZE, "bbox": np.array(box, float),
               "pitch": float(p), "yaw": float(y), "roll": float(r),
               "rotation": pose.to_matrix(p, y, r).reshape(9),
               "in_range": bool(pose.in_range(p, y, r))}
        row.update(extra)
        rows[m].append(row)
    # a face whose image is missing: reported, not evaluated, not silently dropped
    rows[1].append({"sample_id": "z", "image_path": "imgs/missing.png", "dataset": "biwi", "width": SIZE,
                    "height": SIZE, "bbox": np.array([0, 0, 9, 9], float), "rotation": np.eye(3).reshape(9)})
    paths = [manifests.write(rows[0], root / "m0.parquet"), manifests.write(rows[1], root / "m1.parquet")]
    return root, paths


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    root, paths = data
    out = tmp_path_factory.mktemp("report")
    rep = evaluate(FakePredictor(), paths, out, batch_size=3, progress=False)
    return out, rep


def _expected(faces):
    matched = [f for f in faces if f[7] is not None]
    n = len(faces)
    e = np.array([f[7] for f in matched], float)  # (yaw, pitch, roll)
    wrapped = np.minimum(e, 360 - e)
    gt_abs = np.array([[abs(f[3][1]), abs(f[3][0]), abs(f[3][2])] for f in faces], float)
    mz = np.array([f[7] if f[7] is not None else gt_abs[k] for k, f in enumerate(faces)], float)
    return {
        "n_faces": n, "n_matched": len(matched), "detection_rate": len(matched) / n,
        "mae_yaw": e[:, 0].mean(), "mae_pitch": e[:, 1].mean(), "mae_roll": e[:, 2].mean(), "mae": e.mean(),
        "mae_wrapped": wrapped.mean(), "geodesic": np.mean([f[8] for f in matched]),
        "mae_misses_as_zero": mz.mean(),
    }


def test_report_matches_closed_form(report):
    out, rep = report
    exp = _expected(FACES)
    # spelled out once by hand as well: 7 of 9 faces matched; roll errors 5, 6, 356 (wrapped 4)
    assert exp["mae"] == pytest.approx((4 + 8 + 367) / 21)
    assert exp["mae_wrapped"] == pytest.approx((4 + 8 + 15) / 21)
    assert exp["mae_misses_as_zero"] == pytest.approx((104 + 48 + 377) / 27)
    for k, v in exp.items():
        assert rep[k] == pytest.approx(v, abs=1e-6), k
    assert rep["n_false_positives"] == 1  # the 0.3 detection is below the threshold: neither match nor FP
    assert rep["meta"]["n_image_errors"] == 1 and rep["meta"]["n_faces_unreadable"] == 1
    assert (out / "errors.csv").read_text().count("missing.png") == 1
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["mae"] == pytest.approx(rep["mae"]) and on_disk["detection_rate"] == rep["detection_rate"]
    for key in ("mae_yaw", "mae_pitch", "mae_roll", "mae", "geodesic", "detection_rate", "n_faces", "n_matched",
                "n_false_positives", "mae_wrapped", "mae_misses_as_zero", "breakdowns"):
        assert key in on_disk


def test_breakdowns(report):
    _, rep = report
    b = rep["breakdowns"]
    assert b["dataset"]["aflw2000"]["n_faces"] == 5 and b["dataset"]["aflw2000"]["mae_yaw"] == pytest.approx(0.8)
    assert b["dataset"]["biwi"]["detection_rate"] == pytest.approx(2 / 4)
    assert b["masked"]["masked"]["n_faces"] == 1 and b["masked"]["masked"]["mae_pitch"] == pytest.approx(8.0)
    assert b["rotated"]["rotated"]["n_faces"] == 1 and b["rotated"]["rotated"]["geodesic"] == pytest.approx(6.0)
    assert {k: v["n_faces"] for k, v in b["yaw_bin"].items()} == {"0-30": 4, "30-60": 2, "60-90": 2, ">90": 1}
    assert b["yaw_bin"]["60-90"]["detection_rate"] == pytest.approx(0.5)
    # out of range: i (yaw 120) and e (roll 178); e's roll error is 356 plain, so the group MAE roll is 178
    assert b["in_range"]["out_of_range"]["n_faces"] == 2
    assert b["in_range"]["out_of_range"]["mae_roll"] == pytest.approx(178.0)


def test_faces_file_agrees_with_json(report):
    out, rep = report
    t = pq.read_table(out / "faces.parquet").to_pydict()
    assert sorted(t["sample_id"]) == sorted(f[2] for f in FACES)
    sel = [i for i, p in enumerate(t["in_protocol"]) if p]
    m = [i for i in sel if t["matched"][i]]
    assert rep["detection_rate"] == pytest.approx(len(m) / len(sel))
    for a in ("yaw", "pitch", "roll"):
        assert rep[f"mae_{a}"] == pytest.approx(np.mean([t[f"err_{a}"][i] for i in m]))
    assert rep["geodesic"] == pytest.approx(np.mean([t["geodesic"][i] for i in m]))
    by_id = {sid: i for i, sid in enumerate(t["sample_id"])}
    for _, _, sid, _, _, _, _, err, geo in FACES:
        i = by_id[sid]
        assert t["matched"][i] == (err is not None)
        if err is not None:
            assert (t["err_yaw"][i], t["err_pitch"][i], t["err_roll"][i]) == pytest.approx(err, abs=1e-6)
            assert t["geodesic"][i] == pytest.approx(geo, abs=1e-5)
        else:
            assert t["err_yaw"][i] is None or np.isnan(t["err_yaw"][i])
    assert t["iou"][by_id["a"]] == pytest.approx(1440 / 1760)
    assert t["score"][by_id["b"]] == pytest.approx(0.9)
    assert t["err_roll_wrapped"][by_id["e"]] == pytest.approx(4.0)
    fp = pq.read_table(out / "false_positives.parquet").to_pydict()
    assert fp["image_path"] == ["imgs/5.png"] and fp["score"] == [pytest.approx(0.8)]


def test_plots_sheets_and_summary(report):
    out, rep = report
    for name in ("error_vs_yaw.png", "error_vs_pitch.png", "geodesic_cdf.png", "error_by_yaw_bin.png",
                 "worst_cases.jpg", "missed_faces.jpg"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, name
        assert name in rep["files"].values()
    md = (out / "summary.md").read_text()
    assert f"{rep['mae']:.2f}" in md and "6DRepNet" in md and "3.91" in md
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_aflw2000_protocol_filters_out_of_range(data, tmp_path):
    _, paths = data
    rep = evaluate(FakePredictor(), paths, tmp_path, protocol="aflw2000", progress=False, worst_k=2)
    assert rep["protocol"]["n_before"] == 9 and rep["protocol"]["n_after"] == 7
    kept = [f for f in FACES if f[2] not in ("i", "e")]  # yaw 120 and roll 178 are beyond 99 degrees
    exp = _expected(kept)
    for k, v in exp.items():
        assert rep[k] == pytest.approx(v, abs=1e-6), k


def test_image_size_rescales_back(data, tmp_path):
    _, paths = data
    rep = evaluate(FakePredictor(), paths[:1], tmp_path, image_size=32, progress=False, worst_k=0)
    exp = _expected([f for f in FACES if f[1] == 0])
    for k, v in exp.items():
        assert rep[k] == pytest.approx(v, abs=1e-6), k
    t = pq.read_table(tmp_path / "faces.parquet").to_pydict()
    assert t["iou"][t["sample_id"].index("a")] == pytest.approx(1440 / 1760)


def test_cli_runs_with_loaded_predictor(data, tmp_path, monkeypatch):
    import hpe_model
    from cli.eval import main

    _, paths = data
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    calls = []

    def fake_load(checkpoint, device=None, **options):
        calls.append((checkpoint, device))
        return FakePredictor()

    monkeypatch.setattr(hpe_model, "load", fake_load, raising=False)
    out = tmp_path / "rep"
    args = ["--checkpoint", str(ckpt), "--manifest", str(paths[0]), "--manifest", str(paths[1]), "--out", str(out),
            "--device", "cpu", "--protocol", "aflw2000", "--worst-k", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert calls == [(str(ckpt), "cpu")]
    assert "Detection: 5 of 7 faces" in res.output
    assert json.loads((out / "report.json").read_text())["n_faces"] == 7
    res = CliRunner().invoke(main, ["run"] + args[:-4] + ["--out", str(tmp_path / "rep2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["n_faces"] == 9


def test_cli_errors_are_clear(data, tmp_path, monkeypatch):
    import hpe_model
    from cli.eval import main

    res = CliRunner().invoke(main, ["--out", str(tmp_path)])
    assert res.exit_code != 0 and "--checkpoint" in res.output
    monkeypatch.setattr(hpe_model, "load", lambda c, device=None, **options: FakePredictor(), raising=False)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    res = CliRunner().invoke(main, ["--checkpoint", str(ckpt), "--manifest", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "bad.parquet" in res.output and "Traceback" not in res.output
