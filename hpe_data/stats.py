"""Pose statistics of a manifest: summary table (markdown + JSON) and yaw/pitch/roll histograms (PNG).

`--compare` overlays two manifests' histograms in one figure. After a correct in-plane rotation of turned
heads the yaw and pitch histograms change (rotation mixes them, conventions §2); a roll-only rotation leaves
them identical, which the overlay and the stored bin counts (`histograms.json`) show at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import manifests

from . import pose

ANGLES = ("yaw", "pitch", "roll")
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
BIN_EDGES = np.arange(-180.0, 180.0 + 1e-9, 3.0)  # fixed 3-degree bins: histograms of any two manifests align
COLUMNS = ["dataset", "yaw", "pitch", "roll", "in_range"]


def load(path) -> dict[str, np.ndarray]:
    """The columns statistics need, as numpy (missing angles are NaN)."""
    t = manifests.read(path, columns=COLUMNS)
    out = {"dataset": np.array(t.column("dataset").to_pylist(), dtype=object)}
    for k in ANGLES:
        out[k] = np.asarray(pc.fill_null(t.column(k).cast(pa.float64()), np.nan).to_numpy(), dtype=np.float64)
    out["in_range"] = np.asarray(pc.fill_null(t.column("in_range"), False).to_numpy(), dtype=bool)
    return out


def _angle_stats(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q = np.percentile(v, PERCENTILES)
    d = {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
         "max": float(v.max())}
    d.update({f"p{p}": float(x) for p, x in zip(PERCENTILES, q)})
    return d


def _group(d: dict, sel: np.ndarray) -> dict:
    has_pose = np.isfinite(d["yaw"][sel]) & np.isfinite(d["pitch"][sel]) & np.isfinite(d["roll"][sel])
    # in_range recomputed from the angles too: a stale flag (e.g. from a tool that shifted roll) would show
    recomputed = np.asarray(pose.in_range(d["pitch"][sel], d["yaw"][sel], d["roll"][sel])) & has_pose
    return {"count": int(sel.sum()), "with_pose": int(has_pose.sum()), "in_range": int(d["in_range"][sel].sum()),
            "in_range_recomputed": int(recomputed.sum()),
            **{k: _angle_stats(d[k][sel]) for k in ANGLES}}


def summarize(d: dict) -> dict:
    """{'all': group, 'per_dataset': {name: group}}; group = counts + per-angle mean/std/min/max/percentiles."""
    names = sorted(set(d["dataset"].tolist()))
    return {"all": _group(d, np.ones(len(d["yaw"]), bool)),
            "per_dataset": {n: _group(d, d["dataset"] == n) for n in names}}


def to_markdown(summary: dict, title: str | None = None) -> str:
    """The summary as markdown tables: one for counts, one row per (group, angle) for the numbers."""
    groups = {"all": summary["all"], **summary["per_dataset"]}
    lines = [f"### {title}", ""] if title else []
    lines += ["| group | count | with pose | in range (flag) | in range (angles) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {g} | {s['count']} | {s['with_pose']} | {s['in_range']} | {s['in_range_recomputed']} |"
              for g, s in groups.items()]
    cols = ["mean", "std", "min", "max"] + [f"p{p}" for p in PERCENTILES]
    lines += ["", "| group | angle | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for g, s in groups.items():
        for k in ANGLES:
            a = s[k]
            vals = [f"{a[c]:.2f}" if a["n"] else "-" for c in cols]
            lines.append(f"| {g} | {k} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def histogram_counts(d: dict) -> dict[str, list[int]]:
    """Counts per angle over BIN_EDGES (values outside +-180 land in the end bins)."""
    return {k: np.histogram(np.clip(d[k][np.isfinite(d[k])], -180, 180), BIN_EDGES)[0].tolist() for k in ANGLES}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _xlim(ds) -> tuple[float, float]:
    vals = np.concatenate([d[k][np.isfinite(d[k])] for d in ds for k in ANGLES] or [np.zeros(1)])
    lim = min(180.0, max(30.0, np.ceil((np.abs(vals).max() if vals.size else 0) / 10) * 10 + 5))
    return -lim, lim


def plot_histograms(named: dict[str, dict], path) -> Path:
    """One row of yaw/pitch/roll panels; each named manifest is a step histogram (overlaid when several)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    lim = _xlim(list(named.values()))
    sizes = {len(d["yaw"]) for d in named.values()}
    density = len(sizes) > 1  # manifests of different sizes: compare shapes, not counts
    for ax, k in zip(axes, ANGLES):
        for i, (name, d) in enumerate(named.items()):
            v = np.clip(d[k][np.isfinite(d[k])], -180, 180)
            ax.hist(v, BIN_EDGES, density=density, histtype="step" if len(named) > 1 else "stepfilled",
                    lw=1.6 - 0.4 * i, label=f"{name} (n={v.size})", alpha=0.9 if len(named) > 1 else 0.7)
        ax.axvline(-pose.RANGE_LIMIT, color="grey", ls=":", lw=0.8)
        ax.axvline(pose.RANGE_LIMIT, color="grey", ls=":", lw=0.8)
        ax.set_xlim(*lim)
        ax.set_xlabel(f"{k} (deg)")
        ax.set_title(k)
    axes[0].set_ylabel("density (per degree)" if density else "faces")
    axes[0].legend(fontsize=8, loc="upper left")
    return _save(plt, fig, path)


def plot_yaw_pitch(d: dict, path, title: str = "") -> Path:
    """2D yaw-pitch density (log colour), the joint view the 1D histograms miss."""
    plt = _plt()
    from matplotlib.colors import LogNorm

    ok = np.isfinite(d["yaw"]) & np.isfinite(d["pitch"])
    fig, ax = plt.subplots(figsize=(5.2, 4.4), constrained_layout=True)
    lim = _xlim([d])
    edges = np.arange(lim[0], lim[1] + 1e-9, 3.0)
    if ok.any():
        h = ax.hist2d(d["yaw"][ok], d["pitch"][ok], [edges, edges], norm=LogNorm(), cmap="viridis")
        fig.colorbar(h[3], ax=ax, label="faces")
    ax.set_xlabel("yaw (deg, + = nose to image-left)")
    ax.set_ylabel("pitch (deg, + = looks up)")
    ax.set_aspect("equal")
    ax.set_title(title or "yaw-pitch density")
    return _save(plt, fig, path)


def _save(plt, fig, path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_stats(manifest, out_dir, compare=None) -> dict:
    """Write summary.md/.json, histograms.png/.json and yaw_pitch.png (+ compare_histograms.png) to out_dir.

    Returns {'summary': ..., 'markdown': str, 'files': [paths]}; with `compare`, summary and histogram counts
    hold both manifests keyed by their file names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = {_name(manifest): load(manifest)}
    if compare is not None:
        name2 = _name(compare)
        if name2 in named:
            name2 = f"{name2} (compare)"
        named[name2] = load(compare)
    summary = {n: summarize(d) for n, d in named.items()}
    md = "\n".join(to_markdown(s, n) for n, s in summary.items())
    files = [out / "summary.md", out / "summary.json", out / "histograms.json"]
    _write_text(files[0], md)
    _write_text(files[1], json.dumps(summary, indent=1))
    hist = {"bin_edges": BIN_EDGES.tolist(), "counts": {n: histogram_counts(d) for n, d in named.items()}}
    _write_text(files[2], json.dumps(hist))
    first = next(iter(named))
    files.append(plot_histograms({first: named[first]}, out / "histograms.png"))
    files.append(plot_yaw_pitch(named[first], out / "yaw_pitch.png", first))
    if compare is not None:
        files.append(plot_histograms(named, out / "compare_histograms.png"))
    return {"summary": summary, "markdown": md, "files": files}


def _name(path) -> str:
    p = Path(path)
    return p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name
