"""The one stage runner: every stage is a function from a work item to manifest rows.

It gives each stage the same guarantees: process workers, a tqdm bar, an error report (path + reason) beside
the output, atomic outputs, resume after a kill, `--shard I/N` part files, and per-row seeds derived from
(seed, sample_id) so that the output does not depend on the worker count.

How resume works: items are cut into fixed chunks (by position in the sorted item list, independent of the
worker count); each finished chunk is written atomically to `<out>.work/`; a re-run skips chunks whose file
exists and reads back. The final manifest is written (temp + rename) only when all chunks are done, and the
work folder is then removed. A shard with no items (more shards than items) writes an empty part file.

The work folder also holds `fingerprint.json` (stage function, seed, options, digests of the item keys and
payloads, chunk size, shard): a re-run whose fingerprint differs discards the old chunks (and says so on
stderr) instead of mixing outputs of two configurations. `pids` lists the processes of each run (host, pid):
a resumed run deletes the temporary files (`.NAME.tmp-PID`) those processes left behind when they were
killed, in the work folder, beside the output and in the folders the stage writes images to.

Ctrl-C and SIGTERM stop the run cleanly: the workers are terminated, finished chunks are kept, temporary files
of the run are removed, and `KeyboardInterrupt` (an `Interrupted` for SIGTERM) propagates, so a command exits
non-zero.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import re
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

import manifests
from manifests.schema import schema_for

FINGERPRINT = "fingerprint.json"
PIDS = "pids"
TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")  # what every atomic writer of the toolkit names its temp files
FOREIGN_TMP_AGE_S = 600.0  # a temp file of another host is stale after this long (no write lasts that long)


class StageError(Exception):
    """A bad input: reported with its path and reason, never fatal to the run."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM); like Ctrl-C, finished chunks are kept for a resume."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


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


# ---------------------------------------------------------------- chunks


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


_EMPTY = pa.table({"sample_id": pa.array([], pa.string())})


def _write_chunk(path: Path, rows: list, errors: list):
    """Write a finished chunk atomically; returns (table, errors) as `_read_chunk` gives them."""
    table = manifests.rows_to_table(rows) if rows else _EMPTY
    meta = {b"hpe_errors": json.dumps(errors).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # A chunk lives until the final write: no compression, statistics or dictionaries (2x faster to write).
    pq.write_table(table, tmp, compression="none", write_statistics=False, use_dictionary=False)
    os.replace(tmp, path)
    # The table in hand stands for the file: the final manifest is written and read through Parquet anyway,
    # so chunks kept in memory and chunks read back on resume give the same manifest.
    return (table if rows else None), [tuple(e) for e in errors]


def _read_chunk(path: Path):
    try:
        t = pq.read_table(path)
        errors = [tuple(e) for e in json.loads((t.schema.metadata or {}).get(b"hpe_errors", b"[]"))]
    except Exception:
        return None  # a damaged chunk is simply redone
    return (t if t.num_columns > 1 or t.num_rows else None), errors


def _chunk_path(work: Path, k: int) -> Path:
    return work / f"chunk-{k:06d}.parquet"


# ---------------------------------------------------------------- fingerprint of a run's configuration


def _canon(v):
    """Options as plain JSON values, the same in every process and run (arrays by digest, sets sorted)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else repr(v)
    if isinstance(v, np.generic):
        return _canon(v.item())
    if isinstance(v, np.ndarray):
        return {"ndarray": list(v.shape), "dtype": str(v.dtype),
                "blake2b": hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).hexdigest()}
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((_canon(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {"type": type(v).__qualname__, **_canon(dataclasses.asdict(v))}
    if callable(v):
        return f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', type(v).__qualname__)}"
    text = repr(v)
    return type(v).__qualname__ if " at 0x" in text else text  # a default repr changes every run


def fingerprint(fn, items: Sequence[Item], *, seed: int, options: dict, chunk_size: int, shard) -> dict:
    """What the chunks of a run depend on; a resumed run must match it to reuse them."""
    keys = hashlib.blake2b("\0".join(it.key for it in items).encode(), digest_size=16).hexdigest()
    try:  # the input rows themselves, so that an edited input manifest with the same images is not mixed in
        data = hashlib.blake2b(pickle.dumps([it.payload for it in items], 5), digest_size=16).hexdigest()
    except Exception:
        data = None
    return {"stage": f"{fn.__module__}.{fn.__qualname__}", "seed": int(seed), "chunk_size": int(chunk_size),
            "shard": list(shard) if shard else None, "items": len(items), "keys": keys, "payload": data,
            "options": _canon(dict(options))}


def _differences(old: dict, new: dict) -> list[str]:
    """Names of what differs. Options are compared on the keys both runs set: stage entry points always pass
    all their options, so a key missing on one side is a hand-made options dict, not a different setting."""
    diff = [k for k in new if k != "options" and old.get(k) != new[k]]
    o, n = old.get("options") or {}, new["options"]
    diff += [f"option {k!r}" for k in sorted(set(o) & set(n)) if o[k] != n[k]]
    return diff


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- temp files of killed runs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pids(work: Path) -> dict[int, str]:
    """pid -> host of every process that worked on this folder (main processes and workers)."""
    out = {}
    try:
        text = (work / PIDS).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        host, _, pid = line.rpartition(" ")
        if pid.isdigit():
            out[int(pid)] = host
    return out


def _register(work: Path) -> None:
    """Append this process to the work folder's pid list (one short O_APPEND write: safe from many workers)."""
    try:
        fd = os.open(work / PIDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # only the temp-file sweep of a later run depends on it


def _stale(pid: int, owners: dict[int, str] | None, host: str, path: str) -> bool:
    """A temp file left by a dead process. owners=None: any dead pid of this host (folders only this run writes);
    otherwise only pids of the given run; a pid of another host cannot be probed, so the file must be old too.
    The calling process's own temp files count as stale: it only sweeps when it is not writing any."""
    if pid == os.getpid():
        return True
    if owners is not None:
        if pid not in owners:
            return False
        if owners[pid] != host:
            try:
                return time.time() - os.stat(path).st_mtime > FOREIGN_TMP_AGE_S
            except OSError:
                return False
    return not _alive(pid)


def _remove_temps(folder: Path, owners, *, recursive: bool, names: tuple[str, ...] | None = None) -> int:
    """Delete `.NAME.tmp-PID` files of dead processes under `folder`; with `names`, only temps of those NAMEs."""
    host, removed = socket.gethostname(), 0
    if not folder.is_dir():
        return 0
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _, files in walk:
        for name in files:
            m = TMP_NAME.match(name)
            if not m or (names is not None and not any(name.startswith(f".{n}.tmp-") for n in names)):
                continue
            path = os.path.join(dirpath, name)
            if _stale(int(m.group(1)), owners, host, path):
                try:
                    os.unlink(path)
                    removed += 1
                except OSError:
                    pass
    return removed


def _sweep(work: Path, target: Path, write_dirs: Sequence[Path], owners: dict[int, str]) -> int:
    """Remove the temp files a killed run left: in the work folder, beside the output, and (only those of the
    run's own processes) in the folders the stage writes into."""
    report = error_report_path(target)
    n = _remove_temps(work, None, recursive=False)
    n += _remove_temps(target.parent, None, recursive=False, names=(target.name, report.name))
    if owners:
        for d in write_dirs:
            n += _remove_temps(Path(d), owners, recursive=True)
    return n


# ---------------------------------------------------------------- workers and signals


def _worker_init(work: Path, parent: int) -> None:
    # Ctrl-C reaches the whole process group: only the parent reacts (it terminates the pool); SIGTERM from
    # pool.terminate() must end a worker at once, not raise inside the stage function.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    _register(work)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the parent dies (even by SIGKILL), so no orphan keeps writing images
    while the next run resumes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


class _Signals:
    """While a run is in progress, SIGTERM raises `Interrupted` in the main thread (once)."""

    def __enter__(self):
        self.prev = None
        if threading.current_thread() is threading.main_thread():
            self.prev = signal.signal(signal.SIGTERM, self._raise)
        return self

    def _raise(self, signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up that follows must not be interrupted
        raise Interrupted(signum)

    def __exit__(self, *exc):
        if self.prev is not None:
            signal.signal(signal.SIGTERM, self.prev)
        return False


# ---------------------------------------------------------------- the run


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
    write_dirs: Sequence[str | os.PathLike] | None = None,
) -> Result:
    """Run `fn` over `items` and write one manifest (or one part file with `shard`).

    write_dirs: folders `fn` writes files into (images); after a kill, the temp files its processes left there
    are removed by the next run. Default: `options["images_dir"]` when that is set.
    """
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
    options = dict(options or {})
    if write_dirs is None:
        write_dirs = [options["images_dir"]] if isinstance(options.get("images_dir"), (str, os.PathLike)) else []
    write_dirs = [Path(d) for d in write_dirs]
    work = target.with_name(target.name + ".work")
    if shard is not None and not items:  # more shards than items: an empty part keeps `merge` and array jobs simple
        error_report_path(target).unlink(missing_ok=True)
        manifests.write(schema_for({}).empty_table(), target)
        shutil.rmtree(work, ignore_errors=True)
        return Result(target, 0, [], None)
    _prepare(work, target, write_dirs, fingerprint(fn, items, seed=seed, options=options, chunk_size=chunk_size,
                                                   shard=shard), resume)
    ctx = Context(seed=seed, out=out, options=options)

    chunks = [items[k: k + chunk_size] for k in range(0, len(items), chunk_size)]
    done: dict[int, tuple] = {}
    for k in range(len(chunks)):
        p = _chunk_path(work, k)
        if p.exists():
            got = _read_chunk(p)
            if got is not None:
                done[k] = got
    skipped = len(done)
    todo = [k for k in range(len(chunks)) if k not in done]

    bar = tqdm(total=len(items), desc=desc, unit="item", disable=None, file=sys.stderr)
    bar.update(sum(len(chunks[k]) for k in done))
    pool = None
    try:
        with _Signals():
            jobs = ((fn, chunks[k], ctx) for k in todo)
            if workers > 1 and len(todo) > 1:
                pool = mp.get_context("fork").Pool(min(workers, len(todo)), initializer=_worker_init,
                                                   initargs=(work, os.getpid()))
                results = pool.imap(_run_chunk, jobs)
            else:
                results = map(_run_chunk, jobs)
            for k, (rows, errors) in zip(todo, results):
                done[k] = _write_chunk(_chunk_path(work, k), rows, errors)
                bar.update(len(chunks[k]))
            if pool is not None:
                pool.close()
                pool.join()
                pool = None
    except BaseException as e:
        if pool is not None:  # stop the workers now: close() + join() would first finish every queued chunk
            pool.terminate()
            pool.join()
        if isinstance(e, KeyboardInterrupt):
            removed = _sweep(work, target, write_dirs, _read_pids(work))
            print(f"\n{desc}: interrupted; {len(done)} of {len(chunks)} chunk(s) kept in {work} "
                  f"({removed} temp file(s) removed); run the same command again to resume", file=sys.stderr)
        raise
    finally:
        bar.close()

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


def _prepare(work: Path, target: Path, write_dirs: list[Path], fp: dict, resume: bool) -> None:
    """Make the work folder ready: clean up after a killed run, drop chunks of another configuration, record
    this run's fingerprint and pid."""
    if work.is_dir():
        _sweep(work, target, write_dirs, _read_pids(work))
        old = _load_json(work / FINGERPRINT)
        stale = sorted(work.glob("chunk-*.parquet"))
        why = None
        if not resume:
            why = "resume is off"
        elif stale and old is None:
            why = "no readable fingerprint"
        elif stale and _differences(old, fp):
            why = "a different " + ", ".join(_differences(old, fp))
        if why and stale:
            print(f"{work}: discarding {len(stale)} chunk(s) of an earlier run ({why})", file=sys.stderr)
        if why:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / PIDS).unlink(missing_ok=True)  # the old run's processes are gone, and their temp files with them
    tmp = work / f".{FINGERPRINT}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(fp, indent=1, sort_keys=True))
    os.replace(tmp, work / FINGERPRINT)
    _register(work)


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
