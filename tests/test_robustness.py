"""Robustness of the data stages: kills and resumes, signals, bad inputs of every kind, sharded runs.

Kill tests run a stage in a subprocess (a small driver calling the library, each item slowed by a sleep so
that the kill lands mid-run), SIGKILL it once its work folder holds a finished chunk, run the same command
again and compare with an uninterrupted run made here: same table, same image bytes, no temp files left.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
from click.testing import CliRunner

import manifests
from cli.data import main as cli
from hpe_data import rotate as rot
from hpe_data.importers import import_dataset
from hpe_data.masks import build_masked
from hpe_data.runner import Item, run
from hpe_data.synth import synth

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 12

DRIVER = textwrap.dedent('''
    """Run one stage through its library function; each item is delayed by HPE_TEST_DELAY seconds."""
    import functools, json, os, signal, sys, time

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the parent ignores it
    args = json.loads(sys.argv[1])
    delay = float(os.environ.get("HPE_TEST_DELAY", "0"))


    def slow(module, name):  # same name and module: the run's fingerprint does not change
        fn = getattr(module, name)

        @functools.wraps(fn)
        def slowed(item, ctx):
            time.sleep(delay)
            return fn(item, ctx)

        setattr(module, name, slowed)


    stage = args.pop("stage")
    if stage == "import":
        from hpe_data.importers import import_dataset, mat
        slow(mat, "stage_aflw2000")
        result = import_dataset("aflw2000", **args)
    elif stage == "rotate":
        from hpe_data import rotate
        slow(rotate, "rotate_item")
        result = rotate.rotate(**args)
    else:
        from hpe_data.masks import stage as masks
        slow(masks, "mask_item")
        result = masks.build_masked(**args)
    print(result.summary())
''')


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 synthetic AFLW2000-format images and their imported manifest."""
    base = tmp_path_factory.mktemp("robust")
    raw = base / "raw"
    synth("aflw2000", raw, N_IMAGES, seed=5, progress=False)
    manifest = import_dataset("aflw2000", raw, base / "in" / "m.parquet").out
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    return dict(raw=raw, manifest=manifest, driver=driver)


def stage_args(stage: str, data: dict, folder: Path, **kw) -> dict:
    """Library arguments of a stage writing into `folder` (same layout everywhere: equal relative paths)."""
    if stage == "import":
        args = dict(root=data["raw"], out=folder / "m.parquet")
    elif stage == "rotate":
        args = dict(manifest=data["manifest"], out=folder / "r.parquet", images_dir=folder / "img", copies=2, seed=3)
    else:
        args = dict(manifest=data["manifest"], out=folder / "k.parquet", images_dir=folder / "img", seed=3,
                    write_mask_png=True)
    return {**args, **kw}


def run_in_process(stage: str, args: dict):
    if stage == "import":
        return import_dataset("aflw2000", **args)
    if stage == "rotate":
        return rot.rotate(**args)
    return build_masked(**args)


def command(data: dict, stage: str, args: dict) -> list[str]:
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
    return [sys.executable, str(data["driver"]), json.dumps({"stage": stage, **plain})]


def environ(delay: float) -> dict:
    return {**os.environ, "HPE_TEST_DELAY": str(delay)}


def start_and_wait_for_a_chunk(cmd: list[str], work: Path, delay: float) -> subprocess.Popen:
    """Start the driver; return once the work folder holds a finished chunk (the run is then mid-way)."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=environ(delay), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 120  # a hang guard, not a timing check
    while not list(work.glob("chunk-*.parquet")):
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"the stage ended (rc {p.returncode}) before a chunk appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            p.kill()
            pytest.fail("no chunk was written within 120 s")
        time.sleep(0.005)
    return p


def rerun(cmd: list[str], delay: float) -> str:
    r = subprocess.run(cmd, cwd=ROOT, env=environ(delay), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".work")]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sorted_table(path) -> pa.Table:
    t = manifests.read(path)
    return t.sort_by("sample_id")


def assert_same_output(got: dict, ref: dict) -> None:
    assert sorted_table(got["out"]).equals(sorted_table(ref["out"]))
    if "images_dir" in got:
        a, b = tree(Path(got["images_dir"])), tree(Path(ref["images_dir"]))
        assert a.keys() == b.keys() and len(a) > 0
        assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


# ---------------------------------------------------------------- kill -9 mid-run, then resume


@pytest.mark.parametrize("stage", ["import", "rotate", "build-masked"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(data, tmp_path, stage):
    ref = stage_args(stage, data, tmp_path / "ref")
    run_in_process(stage, ref)
    got = stage_args(stage, data, tmp_path / "run", chunk_size=2)
    out = Path(got["out"])
    cmd = command(data, stage, got)
    p = start_and_wait_for_a_chunk(cmd, out.with_name(out.name + ".work"), delay=0.1)
    p.kill()
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()  # killed mid-run: nothing final was written
    # what a kill in the middle of a file write leaves: a temp file of the dead process
    if "images_dir" in got:
        half = Path(got["images_dir"]) / "sub" / f".x.jpg.tmp-{p.pid}"
    else:
        half = out.parent / f".{out.name}.tmp-{p.pid}"
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"half a JPEG")
    summary = rerun(cmd, delay=0.0)
    assert "resumed" in summary
    assert_same_output(got, ref)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- Ctrl-C / SIGTERM with workers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_with_workers_stops_cleanly_and_resumes(data, tmp_path, sig):
    ref = stage_args("rotate", data, tmp_path / "ref")
    run_in_process("rotate", ref)
    got = stage_args("rotate", data, tmp_path / "run", chunk_size=1, workers=2)
    out = Path(got["out"])
    work = out.with_name(out.name + ".work")
    cmd = command(data, "rotate", got)
    p = start_and_wait_for_a_chunk(cmd, work, delay=0.3)
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"the run hung after {sig.name}")
    assert p.returncode != 0
    assert "interrupted" in err and "resume" in err
    assert not out.exists() and list(work.glob("chunk-*.parquet"))  # finished chunks are kept
    pids = [int(line.split()[-1]) for line in (work / "pids").read_text().splitlines()]
    assert len(pids) >= 2  # the main process and its workers, all gone

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert not any(alive(pid) for pid in pids)
    assert [q for q in leftovers(tmp_path) if q != work] == []  # no temp file of a terminated worker
    assert "resumed" in rerun(cmd, delay=0.0)
    assert_same_output(got, ref)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- resume safety (in-process, runner level)


def toy(item: Item, ctx) -> list[dict]:
    if item.key == ctx.options.get("die_at"):
        raise KeyboardInterrupt
    x = float(ctx.rng(item.key).uniform(0, 10)) * ctx.options.get("scale", 1.0)
    return [dict(sample_id=item.key, image_path=f"{item.key}.jpg", dataset="t", width=20, height=20,
                 bbox=np.array([x, 0.0, x + 5, 5.0]))]


def keys(n: int = 12) -> list[Item]:
    return [Item(f"k{i:02d}") for i in range(n)]


def interrupted(out: Path, seed: int, extra: dict | None = None) -> Path:
    """A run stopped by Ctrl-C in item k07: chunks 0 and 1 (k00..k05) are done."""
    with pytest.raises(KeyboardInterrupt):
        run(toy, keys(), out, seed=seed, chunk_size=3, options={"die_at": "k07", "scale": 1.0, **(extra or {})})
    work = out.with_name(out.name + ".work")
    assert len(list(work.glob("chunk-*.parquet"))) == 2
    return work


@pytest.mark.parametrize("change, word", [
    (dict(seed=2), "seed"),
    (dict(options={"scale": 2.0}), "option 'scale'"),
    (dict(items=keys(13)), "keys"),
    (dict(chunk_size=4), "chunk_size"),
])
def test_resume_discards_chunks_of_another_configuration(tmp_path, capfd, change, word):
    out = tmp_path / "o.parquet"
    interrupted(out, seed=1)
    capfd.readouterr()
    kw = dict(seed=1, chunk_size=3, options={"scale": 1.0})
    kw.update({k: v for k, v in change.items() if k != "items"})
    if "options" in change:
        kw["options"] = {"scale": 1.0, **change["options"]}
    items = change.get("items", keys())
    r = run(toy, items, out, **kw)
    err = capfd.readouterr().err
    assert "discarding 2 chunk(s)" in err and word in err
    assert r.skipped_chunks == 0
    fresh = run(toy, items, tmp_path / "fresh.parquet", **kw)
    assert manifests.read(out).equals(manifests.read(fresh.out))


def test_resume_with_the_same_configuration_reuses_chunks(tmp_path, capfd):
    out = tmp_path / "o.parquet"
    interrupted(out, seed=1)
    capfd.readouterr()
    r = run(toy, keys(), out, seed=1, chunk_size=3, options={"scale": 1.0})
    assert r.skipped_chunks == 2 and "discarding" not in capfd.readouterr().err


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    """Temp files (.NAME.tmp-PID) of the killed run's dead processes go; anything else stays."""
    img = tmp_path / "img"
    out = tmp_path / "o.parquet"
    work = interrupted(out, seed=1, extra={"images_dir": str(img)})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a pid that has exited: a worker of the killed run
    other = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stranger = int(other.stdout)  # dead too, but not a process of this run
    with open(work / "pids", "a") as f:
        f.write(f"{socket.gethostname()} {dead}\n")
    removed = [img / "a" / f".x.jpg.tmp-{dead}", work / f".chunk-000003.parquet.tmp-{dead}",
               tmp_path / f".o.parquet.tmp-{dead}", tmp_path / f".o.parquet.errors.csv.tmp-{dead}"]
    kept = [img / f".y.jpg.tmp-{stranger}", img / f"z.jpg.tmp-{dead}", tmp_path / f".other.parquet.tmp-{dead}",
            img / ".hidden"]
    for p in removed + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    run(toy, keys(), out, seed=1, chunk_size=3, options={"scale": 1.0, "images_dir": str(img)})
    assert [p for p in removed if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_more_shards_than_items_give_empty_parts_that_merge(tmp_path):
    out = tmp_path / "s.parquet"
    parts = [run(toy, keys(3), out, shard=(i, 5)) for i in range(5)]
    assert [p.rows for p in parts] == [1, 1, 1, 0, 0]
    merged = manifests.merge([manifests.parts_dir(out)], tmp_path / "m.parquet")
    assert manifests.read(merged).equals(manifests.read(run(toy, keys(3), tmp_path / "full.parquet").out))


# ---------------------------------------------------------------- bad inputs: import


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_rows(report) -> dict[str, str]:
    with open(report) as f:
        return {e["path"]: e["reason"] for e in csv.DictReader(f)}


def check_report(res_out: Path, bad: dict[Path, str]) -> None:
    errors = error_rows(str(res_out) + ".errors.csv")
    assert sorted(errors) == sorted(str(p) for p in bad)
    for path, word in bad.items():
        assert word.lower() in errors[str(path)].lower(), (path, errors[str(path)])


def test_import_300wlp_bad_inputs(tmp_path):
    """300W-LP format (its own stage function): every kind of bad file, good rows kept, --strict fails."""
    src = tmp_path / "src"
    synth("300w-lp", src, 2, seed=9, progress=False)
    root = src / "300W_LP"
    good = sorted(f"300w-lp/{p.parent.name}/{p.stem}" for p in root.glob("*/*.mat") if p.parent.name != "landmarks")
    mat_file = root / "AFW" / "AFW_000000_0.mat"
    jpg = (root / "AFW" / "AFW_000000_0.jpg").read_bytes()
    m = {k: v for k, v in scipy.io.loadmat(mat_file).items() if not k.startswith("__")}
    sub = root / "LFPW"
    sub.mkdir()
    bad: dict[Path, str] = {}

    def add(i, reason, mat=None, mat_bytes=None, img: bytes | str | None = jpg, blame="mat"):
        stem = f"LFPW_{i:06d}_0"
        if mat_bytes is not None:
            (sub / f"{stem}.mat").write_bytes(mat_bytes)
        else:
            scipy.io.savemat(sub / f"{stem}.mat", mat if mat is not None else m)
        if img == "dir":
            (sub / f"{stem}.jpg").mkdir()
        elif img is not None:
            (sub / f"{stem}.jpg").write_bytes(img)
        bad[sub / f"{stem}.{'mat' if blame == 'mat' else 'jpg'}"] = reason

    raw = mat_file.read_bytes()
    add(10, "MATLAB", mat_bytes=raw[: len(raw) // 2])  # truncated .mat
    add(11, "not a MATLAB", mat_bytes=b"%PDF-1.4 not a mat file\n" * 10)
    add(12, "no Pose_Para", mat={k: v for k, v in m.items() if k != "Pose_Para"})
    add(13, "Pose_Para has shape", mat={**m, "Pose_Para": np.zeros((7, 1), np.float32)})
    add(14, "not finite", mat={**m, "Pose_Para": np.array([[np.nan, 0, 0, 0, 0, 0, 1]], np.float32)})
    add(15, "pt2d has shape", mat={**m, "pt2d": m["pt2d"][:, :60]})
    add(16, "non-finite", mat={**m, "pt2d": np.where(np.arange(68) == 3, np.inf, m["pt2d"])})
    add(17, "missing", img=None, blame="jpg")
    add(18, "unreadable", img=b"GIF89a this is not a JPEG" * 40, blame="jpg")  # not an image at all
    add(19, "unreadable", img="dir", blame="jpg")  # cannot be read: a folder in its place
    add(20, "truncated", img=jpg[: len(jpg) * 2 // 3], blame="jpg")
    pts = root / "landmarks" / "LFPW"
    pts.mkdir(parents=True)
    add(21, "pts_2d has shape")
    scipy.io.savemat(pts / "LFPW_000021_0_pts.mat", {"pts_2d": np.zeros((68, 3))})
    bad[pts / "LFPW_000021_0_pts.mat"] = bad.pop(sub / "LFPW_000021_0.mat")

    out = tmp_path / "o.parquet"
    res = invoke("import", "--dataset", "300w-lp", "--root", src, "--out", out)
    assert res.exit_code == 0, res.output
    assert [r["sample_id"] for r in manifests.read_rows(out)] == good
    check_report(out, bad)
    strict = invoke("import", "--dataset", "300w-lp", "--root", src, "--out", tmp_path / "s.parquet", "--strict")
    assert strict.exit_code != 0 and "strict" in strict.output
    assert manifests.read(tmp_path / "s.parquet").num_rows == len(good)


def test_import_aflw2000_unreadable_images(data, tmp_path):
    """The kinds tests/test_import_mat.py does not build: a non-image file and an image that cannot be read."""
    raw = data["raw"] / "AFLW2000"
    root = tmp_path / "a"
    root.mkdir()
    stems = sorted(p.stem for p in raw.glob("*.mat"))[:4]
    for s in stems:
        for ext in (".mat", ".jpg"):
            os.symlink(raw / f"{s}{ext}", root / f"{s}{ext}")
    (root / f"{stems[0]}.jpg").unlink()
    (root / f"{stems[0]}.jpg").write_bytes(b"\x89PNG but not really" * 30)
    (root / f"{stems[1]}.jpg").unlink()
    (root / f"{stems[1]}.jpg").mkdir()
    out = tmp_path / "o.parquet"
    res = invoke("import", "--dataset", "aflw2000", "--root", root, "--out", out)
    assert res.exit_code == 0, res.output
    assert [r["sample_id"] for r in manifests.read_rows(out)] == [f"aflw2000/{s}" for s in stems[2:]]
    check_report(out, {root / f"{stems[0]}.jpg": "unreadable", root / f"{stems[1]}.jpg": "unreadable"})


def test_import_biwi_bad_inputs(tmp_path):
    """BIWI files the BIWI tests do not cover: missing or damaged rgb.cal, empty pose file, non-image frame."""
    src = tmp_path / "b"
    synth("biwi", src, 6, seed=4, progress=False)
    seqs = sorted((src / "hpdb").iterdir())
    frame = lambda d, kind: next(d.glob(f"frame_*_{kind}"))  # noqa: E731
    bad: dict[Path, str] = {}
    (seqs[1] / "rgb.cal").unlink()
    bad[seqs[1] / "rgb.cal"] = "calibration file missing"
    cal = (seqs[2] / "rgb.cal").read_text().split()
    (seqs[2] / "rgb.cal").write_text(" ".join(["nan"] + cal[1:]))
    bad[seqs[2] / "rgb.cal"] = "non-finite"
    (seqs[3] / "rgb.cal").write_text(" ".join(["-5"] + cal[1:]))
    bad[seqs[3] / "rgb.cal"] = "not an intrinsic matrix"
    frame(seqs[4], "pose.txt").write_text("")
    bad[frame(seqs[4], "pose.txt")] = "expected 12 numbers, found 0"
    frame(seqs[5], "rgb.png").write_bytes(b"not a png at all" * 50)
    bad[frame(seqs[5], "rgb.png")] = "unreadable"
    out = tmp_path / "o.parquet"
    res = invoke("import", "--dataset", "biwi", "--root", src, "--out", out)
    assert res.exit_code == 0, res.output
    assert [r["sequence"] for r in manifests.read_rows(out)] == [seqs[0].name]
    check_report(out, bad)
    assert invoke("import", "--dataset", "biwi", "--root", src, "--out", tmp_path / "s.parquet",
                  "--strict").exit_code != 0


# ---------------------------------------------------------------- bad inputs: image stages


def image_stage_cli(stage: str, manifest, out, images_dir) -> list:
    if stage == "rotate":
        return ["rotate", "--manifest", manifest, "--out", out, "--images-dir", images_dir, "--seed", "1"]
    if stage == "flip":
        return ["flip", "--manifest", manifest, "--out", out, "--images-dir", images_dir]
    return ["build-masked", "--manifest", manifest, "--out", out, "--images-dir", images_dir, "--seed", "1"]


@pytest.mark.parametrize("stage", ["rotate", "flip", "build-masked"])
def test_image_stage_bad_images_reported_and_good_rows_kept(data, tmp_path, stage):
    rows = manifests.read_rows(data["manifest"])
    jpg = manifests.resolve_image(data["manifest"], rows[0]["image_path"]).read_bytes()
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = {folder / "missing.jpg": "missing", folder / "cut.jpg": "truncated", folder / "text.jpg": "unreadable"}
    (folder / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "text.jpg").write_text("this is a text file, not an image\n" * 20)
    for r in rows:  # the new manifest lives elsewhere: absolute paths
        r["image_path"] = str(manifests.resolve_image(data["manifest"], r["image_path"]))
    for r, path in zip(rows, bad):
        r["image_path"] = str(path)
    good = sorted(r["sample_id"] for r in rows[len(bad):])
    src = manifests.write(rows, tmp_path / "in.parquet")
    out = tmp_path / "o.parquet"
    res = invoke(*image_stage_cli(stage, src, out, tmp_path / "img"))
    assert res.exit_code == 0, res.output
    assert f"{len(good)} row(s)" in res.output and f"{len(bad)} problem(s)" in res.output
    assert sorted(r["parent_id"] for r in manifests.read_rows(out)) == good
    check_report(out, bad)
    strict_out = tmp_path / "s.parquet"
    strict = invoke(*image_stage_cli(stage, src, strict_out, tmp_path / "img"), "--strict")
    assert strict.exit_code != 0 and "strict" in strict.output
    assert manifests.read(strict_out).num_rows == len(good)  # good rows are written before failing


def _broken_manifest(src: Path, dst: Path, kind: str) -> str:
    t = pq.read_table(src)
    if kind == "missing column":
        t = t.drop_columns(["bbox"])
        column = "bbox"
    else:  # wrong list length: 50 landmarks instead of 68
        lm = manifests.to_numpy(t, "landmarks")[:, :100]
        i = t.column_names.index("landmarks")
        t = t.set_column(i, "landmarks", pa.array(list(lm), type=pa.list_(pa.float32())))
        column = "landmarks"
    pq.write_table(t, dst)
    return column


@pytest.mark.parametrize("kind", ["missing column", "wrong list length"])
@pytest.mark.parametrize("stage", ["rotate", "flip", "build-masked"])
def test_invalid_manifest_is_a_clear_error_and_writes_nothing(data, tmp_path, stage, kind):
    src = tmp_path / "in.parquet"
    column = _broken_manifest(Path(data["manifest"]), src, kind)
    out = tmp_path / "out" / "o.parquet"
    res = invoke(*image_stage_cli(stage, src, out, tmp_path / "img"))
    assert res.exit_code != 0
    assert f"'{column}'" in res.output and str(src) in res.output
    assert not (tmp_path / "img").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sharded runs + `hpe-data merge`


@pytest.mark.parametrize("stage", ["build-masked", "flip", "import"])
def test_sharded_cli_runs_merge_to_the_unsharded_manifest(data, tmp_path, stage):
    def args(folder: Path) -> list:
        if stage == "import":  # more shards than items below: some parts are empty
            return ["import", "--dataset", "aflw2000", "--root", data["raw"], "--out", folder / "o.parquet"]
        return image_stage_cli(stage, data["manifest"], folder / "o.parquet", folder / "img")

    n = N_IMAGES + 4 if stage == "import" else 3
    full = invoke(*args(tmp_path / "full"))
    assert full.exit_code == 0, full.output
    for i in range(n):
        res = invoke(*args(tmp_path / "shard"), "--shard", f"{i}/{n}")
        assert res.exit_code == 0, res.output
    parts = manifests.parts_dir(tmp_path / "shard" / "o.parquet")
    assert len(manifests.part_files(parts)) == n
    merged = invoke("merge", parts, "--out", tmp_path / "shard" / "merged.parquet")
    assert merged.exit_code == 0, merged.output
    assert manifests.read(tmp_path / "shard" / "merged.parquet").equals(manifests.read(tmp_path / "full" / "o.parquet"))
    if stage != "import":
        assert tree(tmp_path / "shard" / "img") == tree(tmp_path / "full" / "img")
    assert leftovers(tmp_path) == []
