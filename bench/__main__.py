"""Run the benchmark suite, write bench-results.json and print a table of ratios against the goals."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

from . import cases

# name -> (goal, "min" | "max"): a ratio passes when >= goal (min) or <= goal (max).
GOALS = {
    "import_rows_per_s_per_core": (4000, "min"),
    "masked_over_floor": (1.8, "max"),
    "rotate_over_floor": (1.2, "max"),
    "workers2_speedup": (1.8, "min"),
    "manifest_read_rows_per_s": (None, "min"),
    "loader_over_step": (2.0, "min"),
    "pose_head_overhead": (0.05, "max"),
    "predict_onnx_over_torch_640_b1": (1.0, "min"),
}

CASES = [
    ("import", "import_300wlp"),
    ("masked", "masked"),
    ("rotate", "rotate"),
    ("workers2", "workers2"),
    ("manifest", "manifest_read"),
    ("loader", "loader"),
    ("pose_head", "pose_head"),
    ("predict", "predict"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--only", nargs="*", help="run only these cases: " + " ".join(n for n, _ in CASES))
    ap.add_argument("--out", default="bench-results.json")
    args = ap.parse_args(argv)
    results: dict = {}
    failures: dict = {}
    with tempfile.TemporaryDirectory(prefix="hpe-bench-") as tmp:
        for name, fn_name in CASES:
            if args.only and name not in args.only:
                continue
            fn = getattr(cases, fn_name, None)
            if fn is None:
                failures[name] = "not implemented"
                continue
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            d = Path(tmp) / name
            d.mkdir()
            try:
                results.update(fn(d))
            except Exception as e:  # one broken case must not hide the others
                traceback.print_exc()
                failures[name] = f"{type(e).__name__}: {e}"
    results["cpu_count"] = os.cpu_count()
    if failures:
        results["failures"] = failures
    tmp_out = Path(args.out).with_name("." + Path(args.out).name + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    os.replace(tmp_out, args.out)
    print(table(results))
    print(f"\nwritten: {args.out}")
    return 0


def table(results: dict) -> str:
    lines = ["| metric | value | goal | met |", "|---|---:|---:|:---:|"]
    for k, v in results.items():
        if not isinstance(v, (int, float)) or k == "cpu_count":
            continue
        goal, kind = GOALS.get(k, (None, None))
        met = "" if goal is None else ("yes" if (v >= goal if kind == "min" else v <= goal) else "NO")
        g = "" if goal is None else f"{'≥' if kind == 'min' else '≤'} {goal:g}"
        lines.append(f"| {k} | {v:,.3f} | {g} | {met} |")
    for k, why in results.get("failures", {}).items():
        lines.append(f"| {k} | n/a ({why}) | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
