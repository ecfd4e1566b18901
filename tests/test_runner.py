"""hpe_data.runner: worker-count independence, resume after a kill, shards, error reports, atomic outputs."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import manifests
from hpe_data.runner import Item, StageError, group_by_image, parse_shard, run

CALLS: list[str] = []  # keys the stage function ran on (workers=1 runs in this process)


def stage(item: Item, ctx) -> list[dict]:
    o = ctx.options
    if item.key == o.get("die_at"):
        raise KeyboardInterrupt  # a kill: not an input error, the run stops here
    CALLS.append(item.key)
    if item.key in o.get("bad", ()):
        raise StageError(f"/data/{item.key}.jpg", "unreadable image")
    if item.key in o.get("bug", ()):
        raise ZeroDivisionError("division by zero")
    rng = ctx.rng(item.key)
    n_faces = 2 if item.key in o.get("pairs", ()) else 1
    rows = []
    for k in range(n_faces):
        if k == 1 and o.get("report_second"):
            ctx.report(f"/data/{item.key}.jpg", "second face too small")
            continue
        x = float(rng.uniform(0, 50))
        rows.append(dict(sample_id=f"{item.key}#{k}", image_path=f"img/{item.key}.jpg", dataset="t", width=100,
                         height=80, bbox=np.array([x, 1.0, x + 20, 30.0]), yaw=float(rng.normal()),
                         landmarks=rng.uniform(0, 80, 136) if k == 0 else None))
    return rows


def items(n: int = 40) -> list[Item]:
    return [Item(f"k{i:03d}") for i in np.random.default_rng(0).permutation(n)]  # runner sorts them


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".work")]


def test_workers_do_not_change_the_output(tmp_path):
    a = run(stage, items(), tmp_path / "a.parquet", seed=7, chunk_size=5, options={"pairs": {"k003", "k017"}})
    b = run(stage, items(), tmp_path / "b.parquet", seed=7, workers=2, chunk_size=5, options={"pairs": {"k003", "k017"}})
    c = run(stage, items(), tmp_path / "c.parquet", seed=8, chunk_size=5, options={"pairs": {"k003", "k017"}})
    ta, tb, tc = (manifests.read(r.out) for r in (a, b, c))
    assert a.rows == 42 and ta.equals(tb)
    assert not ta.equals(tc)  # the seed does reach the rows
    ids = ta.column("sample_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 42
    assert leftovers(tmp_path) == []


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    full = run(stage, items(), tmp_path / "full.parquet", seed=3, chunk_size=5)
    out = tmp_path / "r.parquet"
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run(stage, items(), out, seed=3, chunk_size=5, options={"die_at": "k027"})
    assert not out.exists()  # nothing half-written
    done = sorted((out.parent / (out.name + ".work")).glob("chunk-*.parquet"))
    assert len(done) == 5  # k000..k024 finished; the chunk of k027 was lost
    CALLS.clear()
    r = run(stage, items(), out, seed=3, chunk_size=5)
    assert r.skipped_chunks == 5 and "resumed" in r.summary()
    assert sorted(CALLS) == [f"k{i:03d}" for i in range(25, 40)]  # only the missing chunks ran again
    assert manifests.read(out).equals(manifests.read(full.out))
    assert leftovers(tmp_path) == []


def test_damaged_chunk_is_redone(tmp_path):
    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        run(stage, items(), out, chunk_size=5, options={"die_at": "k012"})
    work = out.parent / (out.name + ".work")
    (work / "chunk-000001.parquet").write_bytes(b"PAR1 garbage")
    CALLS.clear()
    r = run(stage, items(), out, chunk_size=5)
    assert r.skipped_chunks == 1 and sorted(CALLS)[:5] == [f"k{i:03d}" for i in range(5, 10)]
    assert manifests.read(out).equals(manifests.read(run(stage, items(), tmp_path / "f.parquet", chunk_size=5).out))


def test_shards_merge_to_the_unsharded_output(tmp_path):
    full = run(stage, items(), tmp_path / "full.parquet", seed=5, chunk_size=4, options={"pairs": {"k010"}})
    out = tmp_path / "s.parquet"
    parts = [run(stage, items(), out, seed=5, chunk_size=4, shard=(i, 2), options={"pairs": {"k010"}}) for i in (0, 1)]
    assert [p.out for p in parts] == [manifests.part_path(out, i, 2) for i in (0, 1)]
    assert sum(p.rows for p in parts) == full.rows == 41
    folder = manifests.parts_dir(out)
    assert manifests.read(folder).num_rows == 41  # the folder reads as one manifest
    merged = manifests.merge([folder], tmp_path / "merged.parquet")
    assert manifests.read(merged).equals(manifests.read(full.out))
    assert leftovers(tmp_path) == []


def test_errors_are_reported_and_the_run_continues(tmp_path):
    out = tmp_path / "e.parquet"
    opts = {"bad": {"k004", "k030"}, "bug": {"k011"}, "pairs": {"k002"}, "report_second": True}
    r = run(stage, items(), out, chunk_size=6, options=opts)
    assert r.rows == 37 and manifests.read(out).num_rows == 37
    assert r.error_report == tmp_path / "e.parquet.errors.csv"
    with open(r.error_report) as f:
        rows = list(csv.DictReader(f))
    got = {(e["path"], e["reason"]) for e in rows}
    assert got == {("/data/k004.jpg", "unreadable image"), ("/data/k030.jpg", "unreadable image"),
                   ("k011", "ZeroDivisionError: division by zero"), ("/data/k002.jpg", "second face too small")}
    assert "4 problem(s)" in r.summary()
    with pytest.raises(StageError, match="strict"):
        run(stage, items(), tmp_path / "s.parquet", chunk_size=6, options=opts, strict=True)
    assert manifests.read(tmp_path / "s.parquet").num_rows == 37  # good rows written before failing
    clean = run(stage, items(), out, chunk_size=6)  # a clean re-run removes the stale report
    assert clean.error_report is None and not (tmp_path / "e.parquet.errors.csv").exists()


def test_no_row_at_all_is_an_error(tmp_path):
    keys = {f"k{i:03d}" for i in range(5)}
    with pytest.raises(StageError, match="no row"):
        run(stage, items(5), tmp_path / "n.parquet", options={"bad": keys})
    assert not (tmp_path / "n.parquet").exists()


def test_duplicate_keys_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run(stage, [Item("a"), Item("a")], tmp_path / "d.parquet")


def test_rng_depends_on_seed_and_key_only(tmp_path):
    from hpe_data.runner import Context

    c1, c2 = Context(seed=1, out=tmp_path / "a"), Context(seed=1, out=tmp_path / "b", options={"x": 1})
    assert c1.rng("face", 3).uniform() == c2.rng("face", 3).uniform()
    assert c1.rng("face", 3).uniform() != c1.rng("face", 4).uniform()
    assert c1.rng("face").uniform() != Context(seed=2, out=tmp_path).rng("face").uniform()


def test_parse_shard():
    assert parse_shard(None) is None and parse_shard("") is None
    assert parse_shard("0/8") == (0, 8) and parse_shard("7/8") == (7, 8)
    for bad in ("8/8", "-1/2", "1/0", "a/b", "3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_group_by_image():
    base = dict(dataset="t", width=10, height=10, bbox=np.array([0.0, 0, 1, 1]))
    rows = [dict(base, sample_id=s, image_path=p) for s, p in (("a#0", "a.jpg"), ("b#0", "b.jpg"), ("a#1", "a.jpg"))]
    groups = {it.key: [r["sample_id"] for r in it.payload] for it in group_by_image(manifests.rows_to_table(rows))}
    assert groups == {"a.jpg": ["a#0", "a#1"], "b.jpg": ["b#0"]}


def test_extra_column_null_in_one_chunk(tmp_path):
    """An extra column that is all-null in one chunk and typed in another still concatenates."""
    out = run(extra_stage, items(8), tmp_path / "x.parquet", chunk_size=4).out
    t = manifests.read(out)
    assert t.schema.field("note").type == pa.string()
    assert t.column("note").to_pylist() == [None] * 4 + ["late"] * 4


def extra_stage(item: Item, ctx) -> list[dict]:
    late = item.key >= "k004"
    return [dict(sample_id=item.key, image_path="i.jpg", dataset="t", width=4, height=4,
                 bbox=np.array([0.0, 0, 1, 1]), note="late" if late else None)]
