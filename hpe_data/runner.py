"""The one stage runner: every stage is a function from a work item to manifest rows.

It gives each stage the same guarantees: process workers, a tqdm bar, an error report (path + reason) beside
the output, atomic outputs, resume after a kill, `--shard I/N` part files, and per-row seeds derived from
(seed, sample_id) so that the output does not depend on the worker count.

How resume works: items are cut into fixed chunks (by position in the sorted item list, independent of the
worker count); each finished chunk is written atomically to `<out>.work/`; a re-run skips chunks whose file
exists and reads back. The final manifest is written (temp + rename) only when all chunks are done, and the
work folder is then removed.
"""
from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

import manifests


class StageError(Exception):
    """A bad input: reported with its path and reason, never fatal to the run."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class Item:
    key: str  # stable id: sorts the work, names errors, seeds randomness
    payload: Any = None


@dataclass
class Context:
    """What a stage function sees besides its item."""

    seed: int
    out: Path  # the manifest being written (image paths are stored relative to its folder)
    options: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def rng(self, *keys) -> np.random.Generator:
        """A generator seeded by (seed, keys): the same for a face whatever worker or shard runs it."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, *(stable_hash(k) for k in keys)])

    def report(self, path, reason: str) -> None:
        """Record a problem that loses part of an item (e.g. one face of an image) without failing the item."""
        self.errors.append((str(path), reason))

    @property
    def base(self) -> Path:
        return manifests.base_dir(self.out)


def stable_hash(key) -> int:
    return int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=4).digest(), "little")


@dataclass
class Result:
    out: Path
    rows: int
    errors: list  # (path, reason)
    error_report: Path | None
    skipped_chunks: int = 0

    def summary(self) -> str:
        msg = f"{self.rows} row(s) -> {self.out}"
        if self.errors:
            msg += f"; {len(self.errors)} problem(s) -> {self.error_report}"
        if self.skipped_chunks:
            msg += f"; resumed ({self.skipped_chunks} chunk(s) already done)"
        return msg


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' (0-based I) -> (I, N)."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects I/N, e.g. 0/8, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


def error_report_path(out: Path) -> Path:
    return out.with_name(out.name + ".errors.csv")


def _run_chunk(args):
    fn, items, ctx = args
    rows = []
    ctx.errors = []
    for item in items:
        try:
            rows.extend(fn(item, ctx))
        except StageError as e:
            ctx.errors.append((e.path, e.reason))
        except Exception as e:  # a bug or an unexpected file: keep going, but say exactly what failed
            ctx.errors.append((item.key, f"{type(e).__name__}: {e}"))
    return rows, ctx.errors


def _write_chunk(path: Path, rows: list, errors: list) -> None:
    table = manifests.rows_to_table(rows) if rows else None
    meta = {b"hpe_errors": json.dumps(errors).encode()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if table is None:
        import pyarrow as pa

        table = pa.table({"sample_id": pa.array([], pa.string())})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_chunk(path: Path):
    try:
        t = pq.read_table(path)
        errors = [tuple(e) for e in json.loads((t.schema.metadata or {}).get(b"hpe_errors", b"[]"))]
    except Exception:
        return None  # a damaged chunk is simply redone
    return (t if t.num_columns > 1 or t.num_rows else None), errors


def run(
    fn: Callable[[Item, Context], list[dict]],
    items: Sequence[Item],
    out: str | os.PathLike,
    *,
    seed: int = 0,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    options: dict | None = None,
    desc: str = "stage",
    chunk_size: int = 32,
    resume: bool = True,
    strict: bool = False,
) -> Result:
    """Run `fn` over `items` and write one manifest (or one part file with `shard`)."""
    out = Path(out)
    items = sorted(items, key=lambda it: it.key)
    if len(set(it.key for it in items)) != len(items):
        raise ValueError("stage items must have unique keys")
    if shard is not None:
        i, n = shard
        items = items[i::n]
        target = manifests.part_path(out, i, n)
    else:
        target = out
    work = target.with_name(target.name + ".work")
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(seed=seed, out=out, options=dict(options or {}))

    chunks = [items[k: k + chunk_size] for k in range(0, len(items), chunk_size)]
    done: dict[int, tuple] = {}
    for k in range(len(chunks)):
        p = work / f"chunk-{k:06d}.parquet"
        if p.exists():
            got = _read_chunk(p)
            if got is not None:
                done[k] = got
    skipped = len(done)
    todo = [k for k in range(len(chunks)) if k not in done]

    bar = tqdm(total=len(items), desc=desc, unit="item", disable=None, file=sys.stderr)
    bar.update(sum(len(chunks[k]) for k in done))
    jobs = ((fn, chunks[k], ctx) for k in todo)
    if workers > 1 and len(todo) > 1:
        pool = mp.get_context("fork").Pool(min(workers, len(todo)))
        results = pool.imap(_run_chunk, jobs)
    else:
        pool, results = None, map(_run_chunk, jobs)
    try:
        for k, (rows, errors) in zip(todo, results):
            _write_chunk(work / f"chunk-{k:06d}.parquet", rows, errors)
            done[k] = _read_chunk(work / f"chunk-{k:06d}.parquet")
            bar.update(len(chunks[k]))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()

    tables = [done[k][0] for k in sorted(done) if done[k][0] is not None]
    errors = [e for k in sorted(done) for e in done[k][1]]
    report = error_report_path(target)
    if errors:
        _write_errors(report, errors)
    elif report.exists():
        report.unlink()
    nrows = sum(t.num_rows for t in tables)
    if nrows == 0:
        raise StageError(target, f"no row could be written ({len(errors)} problem(s), see {report})")
    table = manifests.concat(tables)
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))
    manifests.write(table, target)
    shutil.rmtree(work, ignore_errors=True)
    result = Result(target, nrows, errors, report if errors else None, skipped)
    if strict and errors:
        raise StageError(report, f"{len(errors)} bad input(s) with --strict; good rows were written to {target}")
    return result


def _write_errors(path: Path, errors: list) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows(errors)
    os.replace(tmp, path)


def group_by_image(table) -> list[Item]:
    """Items for image stages: one per image, payload = the rows of its faces (all faces move together)."""
    rows = manifests.table_to_rows(table)
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["image_path"], []).append(r)
    return [Item(key=k, payload=v) for k, v in groups.items()]
