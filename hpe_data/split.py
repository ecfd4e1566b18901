"""Seeded train/test splits that keep a group (person, sequence or image) on one side.

BIWI protocol 2 is a 70/30 split by video with no canonical list; splitting by *subject* is the safe form,
because four people were recorded twice (conventions section 4). The split is reproducible from its seed
and is written down (split.json lists the groups and subjects on each side).

How groups are assigned: the distinct group keys are sorted, shuffled with `numpy.random.default_rng(seed)`,
and the test side takes the shortest prefix of that order whose row count is closest to
`test_fraction * rows` (at least one group on each side).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

import manifests

from .imageio import write_atomic
from .importers.biwi import SEQUENCE_SUBJECT

BY = {"subject": "subject", "sequence": "sequence", "image": "image_path"}

# BIWI sequence -> person (conventions section 4; the importer's table, so there is one source): sequences
# 02/21, 03/15, 05/18 and 07/22 are the same people.
BIWI_PERSON = {f"{k:02d}": v for k, v in SEQUENCE_SUBJECT.items()}


class SplitError(ValueError):
    pass


def biwi_sequence(seq) -> str | None:
    """'12', 12, 'hpdb/12' or 'biwi-12' -> '12'; None when no sequence number 1-24 is found."""
    if seq is None:
        return None
    m = re.findall(r"\d+", str(seq))
    if not m:
        return None
    key = f"{int(m[-1]):02d}"
    return key if key in BIWI_PERSON else None


def biwi_person(seq) -> str | None:
    key = biwi_sequence(seq)
    return BIWI_PERSON[key] if key else None


def _col(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _root_images(table: pa.Table) -> list[str]:
    """image_path of each row's original (following parent_id within the table), so that rotated or
    flipped copies of an image stay on the side of their original."""
    ids, parents, paths = _col(table, "sample_id"), _col(table, "parent_id"), _col(table, "image_path")
    index = {s: i for i, s in enumerate(ids)}
    roots: dict[int, str] = {}
    for i in range(len(ids)):
        chain, j = [], i
        while j not in roots and parents[j] is not None and parents[j] in index and len(chain) <= len(ids):
            chain.append(j)
            j = index[parents[j]]
        root = roots.get(j, paths[j])
        for c in chain + [j]:
            roots[c] = root
    return [roots[i] for i in range(len(ids))]


def group_keys(table: pa.Table, by: str, source: str = "manifest") -> np.ndarray:
    """Group key of every row; raises SplitError when the column is missing or has nulls."""
    if by not in BY:
        raise SplitError(f"--by {by!r}: expected one of {sorted(BY)}")
    col = BY[by]
    vals = _col(table, col)
    nulls = [i for i, v in enumerate(vals) if v is None]
    if col not in table.column_names or nulls:
        n = table.num_rows if col not in table.column_names else len(nulls)
        ex = _col(table, "sample_id")[nulls[0]] if nulls else None
        raise SplitError(f"{source}: cannot split by {by}: column {col!r} is "
                         + ("missing" if col not in table.column_names else f"null in {n} row(s), e.g. {ex!r}"))
    if by == "image":
        vals = _root_images(table)
    if by == "subject":
        _check_biwi_subjects(table, source)
    return np.array([str(v) for v in vals], dtype=object)


def _check_biwi_subjects(table: pa.Table, source: str) -> None:
    """BIWI sequences of one person must carry one subject value, or a split by subject leaks that person."""
    seen: dict[str, dict[str, set]] = {}
    for ds, seq, subj in zip(_col(table, "dataset"), _col(table, "sequence"), _col(table, "subject")):
        person = biwi_person(seq) if ds == "biwi" else None
        if person:
            seen.setdefault(person, {}).setdefault(str(subj), set()).add(biwi_sequence(seq))
    for person, by_subject in sorted(seen.items()):
        if len(by_subject) > 1:
            detail = ", ".join(f"sequence(s) {sorted(s)} -> subject {k!r}" for k, s in sorted(by_subject.items()))
            raise SplitError(f"{source}: BIWI person {person} has several subject values ({detail}); "
                             "a split by subject would put one person on both sides")


def _subjects(table: pa.Table) -> list:
    """Person of each row: the subject column, else the BIWI map from the sequence."""
    out = []
    for ds, seq, subj in zip(_col(table, "dataset"), _col(table, "sequence"), _col(table, "subject")):
        out.append(subj if subj is not None else (biwi_person(seq) if ds == "biwi" else None))
    return out


def assign(keys: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Bool per row, True = test. Whole groups move together; see the module docstring for the rule."""
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"test fraction must be in (0, 1), got {test_fraction}")
    groups, counts = np.unique(keys.astype(str), return_counts=True)  # sorted: independent of row order
    if len(groups) < 2:
        raise SplitError(f"need at least two groups to split, found {len(groups)}")
    order = np.random.default_rng(seed).permutation(len(groups))
    cum = np.cumsum(counts[order])[:-1]  # prefixes of 1 .. n-1 groups
    k = int(np.argmin(np.abs(cum - test_fraction * len(keys)))) + 1
    test_groups = set(groups[order[:k]])
    return np.array([g in test_groups for g in keys.astype(str)], dtype=bool)


def split_table(table: pa.Table, by: str = "subject", test_fraction: float = 0.3, seed: int = 0,
                source: str = "manifest") -> tuple[pa.Table, pa.Table, dict]:
    """(train, test, info): the rows on each side with `split` set, and the record of the split."""
    keys = group_keys(table, by, source)
    test = assign(keys, test_fraction, seed)
    subj = np.array([None if s is None else str(s) for s in _subjects(table)], dtype=object)
    side_subjects = {side: sorted({s for s in subj[m] if s is not None}) for side, m in
                     (("train", ~test), ("test", test))}
    info = {
        "source": source,
        "by": by,
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "test_fraction_rows": float(test.mean()),
        "rows": {"train": int((~test).sum()), "test": int(test.sum())},
        "groups": {"train": sorted(set(keys[~test])), "test": sorted(set(keys[test]))},
        "subjects": side_subjects,
        "subjects_on_both_sides": sorted(set(side_subjects["train"]) & set(side_subjects["test"])),
    }
    out = []
    for side, m in (("train", ~test), ("test", test)):
        t = table.filter(pa.array(m))
        col = pa.array([side] * t.num_rows, pa.string())
        t = t.set_column(t.column_names.index("split"), "split", col) if "split" in t.column_names \
            else t.append_column("split", col)
        out.append(t)
    return out[0], out[1], info


def _rebase(table: pa.Table, src_base: Path, dst_base: Path) -> pa.Table:
    """Rewrite relative image_path / mask_path so that they resolve from the new manifest's folder."""
    if src_base.resolve() == dst_base.resolve():
        return table
    src, dst = str(src_base.resolve()), str(dst_base.resolve())
    for name in ("image_path", "mask_path"):
        if name not in table.column_names:
            continue
        vals = [v if v is None or os.path.isabs(v) else os.path.relpath(os.path.join(src, v), dst)
                for v in table.column(name).to_pylist()]
        table = table.set_column(table.column_names.index(name), name, pa.array(vals, pa.string()))
    return table


def split_manifest(manifest: str | os.PathLike, out_dir: str | os.PathLike, by: str = "subject",
                   test_fraction: float = 0.3, seed: int = 0) -> dict:
    """Write out_dir/train.parquet, test.parquet and split.json; returns the split record."""
    out = Path(out_dir)
    table = manifests.read(manifest)
    train, test, info = split_table(table, by, test_fraction, seed, source=str(manifest))
    base = manifests.base_dir(manifest)
    paths = {"train": out / "train.parquet", "test": out / "test.parquet", "record": out / "split.json"}
    for side, t in (("train", train), ("test", test)):
        manifests.write(_rebase(t, base, out), paths[side])
    info["files"] = {k: str(v) for k, v in paths.items()}
    write_atomic(paths["record"], (json.dumps(info, indent=2) + "\n").encode())
    return info
