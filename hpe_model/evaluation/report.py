"""Evaluation report: report.json, faces.parquet, false_positives.parquet, PNG plots, worst-case sheet, summary.md.

Every file is written under a temporary name and renamed, so a killed run never leaves half a report.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hpe_data.imageio import ImageError, encode, read_rgb, write_atomic

from . import metrics
from .metrics import ANGLES

PROTOCOLS = {
    "none": "every face of the manifests",
    "aflw2000": "faces with |yaw|, |pitch|, |roll| <= 99 degrees (the usual AFLW2000 filter)",
    "biwi": "every frame, no face-detector filtering (protocol 1); protocol 2 = the same on a test manifest "
            "from `hpe-data split --by subject`",
}

# Conventions section 6: published MAE (degrees), trained on 300W-LP unless noted.
LITERATURE = [
    # method, needs a face detector, AFLW2000, BIWI
    ("HopeNet (alpha=2)", "yes", 6.16, 5.18),
    ("FSA-Net", "yes", 5.07, 4.00),
    ("6DRepNet", "yes", 3.97, 3.47),
    ("MOS (RetinaFace, pose bins per anchor)", "no", 5.64, None),
    ("DirectMHP (YOLOv5, pose per anchor)", "no", 4.04, None),
    ("img2pose (Faster R-CNN, 6DoF per proposal)", "no", 3.91, 3.79),
    ("seed project (RetinaFace + 6D head, trained on BIWI + rotated BIWI)", "no", 16.82, "4.45 (own 30 % split)"),
]

SCALARS = ("sample_id", "manifest", "dataset", "image_path", "image_file", "subject", "sequence", "split", "mask")
VECTORS = {"gt_box": 4, "pred_box": 4, "gt_rotation": 9, "pred_rotation": 9, "pred_landmarks5": 10}


# ---------------------------------------------------------------- per-face columns


def face_columns(records: list[dict]) -> dict[str, np.ndarray]:
    """Face records from the runner -> columns, with the per-face errors of every matched face."""
    n = len(records)
    col = {k: np.array([r.get(k) for r in records], dtype=object) for k in SCALARS + ("yaw_bin",)}
    for k in ("masked", "rotated", "has_pose", "matched"):
        col[k] = np.array([bool(r[k]) for r in records], dtype=bool)
    col["in_range_known"] = np.array([r["in_range"] is not None for r in records], dtype=bool)
    col["in_range"] = np.array([bool(r["in_range"]) for r in records], dtype=bool)
    for k in ("iou", "score", "rotate_deg", "label_yaw", "label_pitch", "label_roll"):
        col[k] = np.array([r[k] for r in records], dtype=np.float64)
    for k, m in VECTORS.items():
        col[k] = np.array([np.asarray(r[k], np.float64).reshape(-1) for r in records]).reshape(n, m)
    Rg, Rp = col["gt_rotation"].reshape(-1, 3, 3), col["pred_rotation"].reshape(-1, 3, 3)
    ok_g, ok_p = np.isfinite(Rg).all((1, 2)), np.isfinite(Rp).all((1, 2))
    eye = np.eye(3)
    errs = metrics.face_errors(np.where(ok_p[:, None, None], Rp, eye), np.where(ok_g[:, None, None], Rg, eye))
    valid = {"gt": ok_g, "pred": ok_p & col["matched"], "err": ok_g & ok_p & col["matched"]}
    for k, v in errs.items():
        kind = k.split("_")[0] if k.startswith(("gt_", "pred_")) else "err"
        col[k] = np.where(valid[kind], v, np.nan)
    return col


def apply_protocol(col: dict, protocol: str) -> tuple[np.ndarray, dict]:
    """Faces the headline numbers are computed on, and what the protocol did (n before/after)."""
    n = len(col["matched"])
    info = {"name": protocol, "description": PROTOCOLS[protocol], "n_before": n}
    if protocol == "aflw2000":
        if not col["in_range_known"].all():
            unknown = int((~col["in_range_known"]).sum())
            raise metrics.EvaluationError(
                f"protocol aflw2000 needs the in_range flag or angles; {unknown} face(s) have neither")
        sel = col["in_range"].copy()
        info["filter"] = "in_range (all |angles| <= 99 degrees)"
    else:
        sel = np.ones(n, dtype=bool)
    if protocol == "biwi":
        ds = sorted({str(d) for d in col["dataset"]})
        info["datasets"] = ds
        split = {s for s in col["split"]}
        info["variant"] = "protocol 2 (test manifest of a split)" if split == {"test"} else "protocol 1 (all frames)"
        if ds != ["biwi"]:
            info["warning"] = f"protocol biwi on datasets {ds}"
    info["n_after"] = int(sel.sum())
    return sel, info


def _group_summaries(col: dict, sel: np.ndarray, keys: np.ndarray) -> dict:
    out = {}
    for k in sorted({str(v) for v in keys[sel]}):
        m = sel & (keys.astype(str) == k)
        out[k] = metrics.summarize({c: col[c][m] for c in _SUMMARY_COLS})
    return out


_SUMMARY_COLS = ("matched", "has_pose", "geodesic") + tuple(
    f"{p}_{a}{s}" for a in ANGLES for p, s in (("err", ""), ("err", "_wrapped"), ("gt", "")))


def build_report(col: dict, fps: list[dict], protocol: str = "none", meta: dict | None = None) -> dict:
    sel, info = apply_protocol(col, protocol)
    col["in_protocol"] = sel
    rep = metrics.summarize({c: col[c][sel] for c in _SUMMARY_COLS})
    rep["n_false_positives"] = len(fps)
    rep["protocol"] = info
    rep["breakdowns"] = {
        "dataset": _group_summaries(col, sel, col["dataset"]),
        "manifest": _group_summaries(col, sel, col["manifest"]),
        "masked": _group_summaries(col, sel, np.where(col["masked"], "masked", "unmasked")),
        "rotated": _group_summaries(col, sel, np.where(col["rotated"], "rotated", "original")),
        "yaw_bin": _group_summaries(col, sel & (col["yaw_bin"] != ""), col["yaw_bin"]),
        # Over all faces, not only the protocol's: the out-of-range group is what the filter removes.
        "in_range": _group_summaries(col, col["in_range_known"],
                                     np.where(col["in_range"], "in_range", "out_of_range")),
    }
    fp_by = {}
    for f in fps:
        fp_by[f["manifest"]] = fp_by.get(f["manifest"], 0) + 1
    rep["false_positives_by_manifest"] = fp_by
    rep["meta"] = dict(meta or {})
    return rep


# ---------------------------------------------------------------- files


def _atomic_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _table(col: dict) -> pa.Table:
    arrays = {}
    for k, v in col.items():
        if k in VECTORS:
            m = VECTORS[k]
            arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float64()), m)
        elif v.dtype == object:
            arrays[k] = pa.array([None if x is None else str(x) for x in v], pa.string())
        else:
            arrays[k] = pa.array(v)
    return pa.table(arrays)


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_atomic(path, buf.getvalue())


FACE_FILE_COLUMNS = (
    "sample_id", "dataset", "manifest", "image_path", "subject", "sequence", "split", "mask", "masked",
    "rotate_deg", "rotated", "in_range", "in_protocol", "has_pose", "yaw_bin", "matched", "iou", "score",
    *(f"gt_{a}" for a in ANGLES), *(f"pred_{a}" for a in ANGLES), *(f"label_{a}" for a in ANGLES),
    *(f"err_{a}" for a in ANGLES), *(f"err_{a}_wrapped" for a in ANGLES), "err_mean", "err_mean_wrapped",
    "geodesic", "gt_box", "pred_box", "gt_rotation", "pred_rotation", "pred_landmarks5", "image_file",
)


def write_report(out_dir, records: list[dict], fps: list[dict], errors: list, *, protocol: str = "none",
                 meta: dict | None = None, worst_k: int = 16, echo=None) -> dict:
    """Compute the report from face records and write every output file into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    col = face_columns(records)
    rep = build_report(col, fps, protocol, meta)
    files = {"faces": "faces.parquet", "false_positives": "false_positives.parquet", "summary": "summary.md"}

    _atomic_parquet(_table({k: col[k] for k in FACE_FILE_COLUMNS}), out / files["faces"])
    fp_cols = {
        "manifest": np.array([f["manifest"] for f in fps], dtype=object),
        "image_path": np.array([f["image_path"] for f in fps], dtype=object),
        "score": np.array([f["score"] for f in fps], dtype=np.float64),
        "box": np.array([f["box"] for f in fps], dtype=np.float64).reshape(-1, 4),
    }
    fp_table = pa.table({
        "manifest": pa.array([str(x) for x in fp_cols["manifest"]], pa.string()),
        "image_path": pa.array([str(x) for x in fp_cols["image_path"]], pa.string()),
        "score": pa.array(fp_cols["score"]),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(fp_cols["box"].reshape(-1), pa.float64()), 4),
    })
    _atomic_parquet(fp_table, out / files["false_positives"])
    if errors:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "reason"])
        w.writerows(errors)
        _atomic_text(out / "errors.csv", buf.getvalue())
        files["errors"] = "errors.csv"
    elif (out / "errors.csv").exists():
        (out / "errors.csv").unlink()

    files.update(write_plots(out, col))
    sheets = worst_case_sheets(out, col, worst_k)
    files.update(sheets)
    rep["files"] = files
    rep = _json_safe(rep)
    md = markdown(rep)
    _atomic_text(out / files["summary"], md)
    _atomic_text(out / "report.json", json.dumps(rep, indent=2, allow_nan=False) + "\n")
    if echo is not None:
        echo(md)
    return rep


# ---------------------------------------------------------------- plots (matplotlib Agg, no pyplot state)


def _figure(w: float = 6.4, h: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


def _binned_mean(x, y, edges):
    idx = np.digitize(x, edges) - 1
    centres, means = [], []
    for b in range(len(edges) - 1):
        m = (idx == b) & np.isfinite(y)
        if m.any():
            centres.append((edges[b] + edges[b + 1]) / 2)
            means.append(y[m].mean())
    return np.array(centres), np.array(means)


def _error_vs(col: dict, angle: str, path: Path) -> None:
    sel = col["in_protocol"]
    x = col[f"label_{angle}"]
    ok = sel & col["matched"] & np.isfinite(col["err_mean"]) & np.isfinite(x)
    fig = _figure()
    ax = fig.add_subplot(111)
    ax.scatter(x[ok], col["err_mean"][ok], s=4, c="0.7", label="per face (mean of 3)")
    if ok.any():
        lo, hi = np.floor(x[ok].min() / 10) * 10, np.ceil(x[ok].max() / 10) * 10 + 10
        edges = np.arange(lo, hi + 1e-9, 10.0)
        for a, c in zip(ANGLES, ("C0", "C1", "C2")):
            cx, cy = _binned_mean(x[ok], col[f"err_{a}"][ok], edges)
            ax.plot(cx, cy, "-o", ms=3, color=c, label=f"{a} error, 10-degree bins")
    miss = sel & ~col["matched"] & np.isfinite(x)
    if miss.any():
        ax.plot(x[miss], np.zeros(miss.sum()), "|", color="red", ms=10, label=f"missed ({int(miss.sum())})")
    ax.set_xlabel(f"true {angle} (degrees, label)")
    ax.set_ylabel("absolute error (degrees)")
    ax.set_title(f"Pose error vs {angle}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, path)


def _geodesic_cdf(col: dict, path: Path) -> None:
    g = col["geodesic"][col["in_protocol"] & col["matched"]]
    g = np.sort(g[np.isfinite(g)])
    fig = _figure()
    ax = fig.add_subplot(111)
    if g.size:
        ax.step(g, np.arange(1, g.size + 1) / g.size, where="post")
        ax.set_xlim(0, max(30.0, float(np.percentile(g, 99))))
        for t in (5.0, 10.0, 15.0):
            ax.axvline(t, color="0.8", lw=0.8)
            ax.text(t, 0.02, f" {100 * metrics.cdf(g, [t])[0]:.0f} %", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no matched face with a pose", ha="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_xlabel("geodesic error (degrees)")
    ax.set_ylabel("share of matched faces")
    ax.set_title("CDF of the geodesic error")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)


def _error_by_yaw_bin(col: dict, path: Path) -> None:
    sel = col["in_protocol"]
    fig = _figure()
    ax = fig.add_subplot(111)
    x = np.arange(len(metrics.YAW_BIN_LABELS))
    for j, (a, c) in enumerate(zip(ANGLES, ("C0", "C1", "C2"))):
        vals = []
        for b in metrics.YAW_BIN_LABELS:
            m = sel & col["matched"] & (col["yaw_bin"] == b)
            vals.append(metrics.mean(col[f"err_{a}"][m]) or 0.0)
        ax.bar(x + (j - 1) * 0.27, vals, 0.27, color=c, label=a)
    for i, b in enumerate(metrics.YAW_BIN_LABELS):
        m = sel & (col["yaw_bin"] == b)
        if m.any():
            ax.text(i, 0, f"n={int(m.sum())}\ndet {100 * col['matched'][m].mean():.0f} %", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([f"|yaw| {b}" for b in metrics.YAW_BIN_LABELS])
    ax.set_ylabel("MAE (degrees, matched faces)")
    ax.set_title("Error per |yaw| bin")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save_png(fig, path)


def write_plots(out: Path, col: dict) -> dict:
    files = {"error_vs_yaw": "error_vs_yaw.png", "error_vs_pitch": "error_vs_pitch.png",
             "geodesic_cdf": "geodesic_cdf.png", "error_by_yaw_bin": "error_by_yaw_bin.png"}
    _error_vs(col, "yaw", out / files["error_vs_yaw"])
    _error_vs(col, "pitch", out / files["error_vs_pitch"])
    _geodesic_cdf(col, out / files["geodesic_cdf"])
    _error_by_yaw_bin(col, out / files["error_by_yaw_bin"])
    return files


# ---------------------------------------------------------------- worst cases


def _tile(col: dict, i: int, size: int = 200) -> np.ndarray:
    from hpe_data import draw

    try:
        img = read_rgb(col["image_file"][i])
    except ImageError:
        img = np.zeros((size, size, 3), np.uint8)
        return draw.label(img, "image unreadable", (4, 4))
    H, W = img.shape[:2]
    b = col["gt_box"][i]
    c, half = (b[:2] + b[2:]) / 2, 0.8 * max(b[2] - b[0], b[3] - b[1], 8.0)
    x1, y1 = int(max(0, math.floor(c[0] - half))), int(max(0, math.floor(c[1] - half)))
    x2, y2 = int(min(W, math.ceil(c[0] + half))), int(min(H, math.ceil(c[1] + half)))
    crop = img[y1:y2, x1:x2]
    s = size / max(crop.shape[:2])
    dsize = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    crop = np.ascontiguousarray(cv2.resize(crop, dsize, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR))
    tile = np.zeros((size, size, 3), np.uint8)
    tile[: crop.shape[0], : crop.shape[1]] = crop
    off = np.array([-x1 * s, -y1 * s])
    origin = c * s + off
    length = 0.5 * s * max(b[2] - b[0], b[3] - b[1], 1.0)
    draw.box(tile, b * s + np.tile(off, 2), color=draw.GREEN)
    if np.isfinite(col["pred_box"][i]).all():
        draw.box(tile, col["pred_box"][i] * s + np.tile(off, 2), color=draw.BOX)
    if np.isfinite(col["pred_landmarks5"][i]).all():
        draw.landmarks(tile, col["pred_landmarks5"][i].reshape(5, 2) * s + off)
    dim = tuple(tuple(int(v * 0.45) for v in c_) for c_ in draw.AXIS_COLORS)
    if col["has_pose"][i]:
        draw.pose_axes(tile, col["gt_rotation"][i], origin, length, thickness=4, colors=dim)
    if np.isfinite(col["pred_rotation"][i]).all():
        draw.pose_axes(tile, col["pred_rotation"][i], origin, length, thickness=1)
    sid = str(col["sample_id"][i])
    draw.label(tile, sid[-26:], (2, 2), scale=0.35)
    if col["matched"][i]:
        g = col["geodesic"][i]
        draw.label(tile, f"geo {g:.1f}  mae {col['err_mean'][i]:.1f}", (2, size - 30), scale=0.35)
        gt = "/".join(f"{col[f'gt_{a}'][i]:.0f}" for a in ANGLES)
        pr = "/".join(f"{col[f'pred_{a}'][i]:.0f}" for a in ANGLES)
        draw.label(tile, f"ypr {gt} -> {pr}", (2, size - 16), scale=0.33)
    else:
        draw.label(tile, "MISSED", (2, size - 16), color=draw.RED, scale=0.4)
    return tile


def contact_sheet(col: dict, idx, cols: int = 4, size: int = 200, title: str = "") -> np.ndarray:
    from hpe_data import draw

    idx = list(idx)
    rows = max(1, math.ceil(len(idx) / cols))
    head = 22
    sheet = np.full((head + rows * size, cols * size, 3), 32, np.uint8)
    draw.label(sheet, title, (4, 4), scale=0.45, background=None)
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        sheet[head + r * size: head + (r + 1) * size, c * size: (c + 1) * size] = _tile(col, i, size)
    return sheet


def worst_case_sheets(out: Path, col: dict, k: int) -> dict:
    """worst_cases.jpg: the k matched faces with the largest geodesic error (thin bright axes: predicted,
    thick dark axes: true; green box: true, cyan: predicted); missed_faces.jpg: up to k missed faces."""
    files = {}
    sel = col["in_protocol"]
    geo = np.where(sel & col["matched"] & np.isfinite(col["geodesic"]), col["geodesic"], -np.inf)
    worst = [i for i in np.argsort(-geo, kind="stable")[:k] if np.isfinite(geo[i])]
    title = "worst geodesic error | thick dark axes: true, thin: predicted | green box: true, cyan: predicted"
    if worst:
        write_atomic(out / "worst_cases.jpg", encode(contact_sheet(col, worst, title=title), ".jpg", 90))
        files["worst_cases"] = "worst_cases.jpg"
    missed = list(np.flatnonzero(sel & ~col["matched"])[:k])
    if missed:
        write_atomic(out / "missed_faces.jpg",
                     encode(contact_sheet(col, missed, title="missed faces (no detection at IoU/score thresholds)"),
                            ".jpg", 90))
        files["missed_faces"] = "missed_faces.jpg"
    return files


# ---------------------------------------------------------------- markdown


def _f(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if pct else f"{v:.2f}"


def _breakdown_table(groups: dict) -> list[str]:
    lines = ["| group | faces | detected | yaw | pitch | roll | MAE | geodesic |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in groups.items():
        lines.append(f"| {name} | {s['n_faces']} | {_f(s['detection_rate'], True)} | {_f(s['mae_yaw'])} | "
                     f"{_f(s['mae_pitch'])} | {_f(s['mae_roll'])} | {_f(s['mae'])} | {_f(s['geodesic'])} |")
    return lines


def markdown(rep: dict) -> str:
    p, meta = rep["protocol"], rep.get("meta", {})
    L = ["# Head-pose evaluation (full frame, no face crop)", ""]
    L.append(f"Protocol **{p['name']}**: {p['description']}.")
    if "variant" in p:
        L.append(f"BIWI {p['variant']}.")
    if p["n_before"] != p["n_after"]:
        L.append(f"Faces kept by the protocol: {p['n_after']} of {p['n_before']}.")
    if "warning" in p:
        L.append(f"Warning: {p['warning']}.")
    L += ["", f"Detection: {rep['n_matched']} of {rep['n_faces']} faces matched ({_f(rep['detection_rate'], True)}) "
          f"at IoU >= {meta.get('iou_thresh', 0.5)} and score >= {meta.get('score_thresh', 0.5)}; "
          f"{rep['n_false_positives']} false positive(s) on {meta.get('n_images', '?')} image(s).", ""]
    if meta.get("n_image_errors"):
        L += [f"Unreadable images: {meta['n_image_errors']} ({meta.get('n_faces_unreadable', 0)} face(s) not "
              "evaluated, see errors.csv).", ""]
    L += ["| metric (matched faces, degrees) | value |", "|---|---:|"]
    for key, name in (("mae_yaw", "MAE yaw"), ("mae_pitch", "MAE pitch"), ("mae_roll", "MAE roll"),
                      ("mae", "**MAE** (mean of the three)"), ("geodesic", "geodesic error, mean"),
                      ("geodesic_median", "geodesic error, median")):
        L.append(f"| {name} | {_f(rep[key])} |")
    L += ["", "For comparison with older numbers only (not the metric to quote):", "",
          "| variant | value |", "|---|---:|",
          f"| MAE with a +-180 degree wrap, min(abs(d), 360 - abs(d)) | {_f(rep['mae_wrapped'])} |",
          f"| MAE counting missed faces as 0-degree predictions | {_f(rep['mae_misses_as_zero'])} |", ""]
    titles = {"dataset": "By dataset", "masked": "Masked vs unmasked", "rotated": "Rotated vs original",
              "yaw_bin": "By |yaw| bin (label yaw)", "in_range": "In range (+-99 degrees) vs out, all faces"}
    for key, title in titles.items():
        groups = rep["breakdowns"].get(key) or {}
        if len(groups) > 1 or key in ("dataset", "yaw_bin"):
            L += [f"## {title}", ""] + _breakdown_table(groups) + [""]
    L += ["## Published numbers for context (MAE in degrees, trained on 300W-LP; conventions section 6)", "",
          "| method | face detector needed | AFLW2000 | BIWI |", "|---|---|---:|---:|"]
    for name, det, a, b in LITERATURE:
        cell = [("-" if v is None else v if isinstance(v, str) else f"{v:.2f}") for v in (a, b)]
        L.append(f"| {name} | {det} | {cell[0]} | {cell[1]} |")
    L += ["", "Methods that need a face detector are scored on face crops given to them (from the annotation or a "
          "separate detector); the MAE above is over the faces this model found itself, so read it together "
          "with the detection rate.", ""]
    return "\n".join(L)


def read_faces(out_dir) -> pa.Table:
    return pq.read_table(Path(out_dir) / "faces.parquet")


__all__ = ["PROTOCOLS", "LITERATURE", "apply_protocol", "build_report", "face_columns", "markdown", "read_faces",
           "write_report", "worst_case_sheets", "contact_sheet", "write_plots"]
