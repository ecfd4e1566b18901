"""Seeded splits: whole groups on one side, reproducible, close to the requested fraction, BIWI people kept."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import manifests
from hpe_data.split import BIWI_PERSON, SplitError, assign, split_manifest, split_table

# conventions section 4: people recorded twice
TWICE = [("02", "21"), ("03", "15"), ("05", "18"), ("07", "22")]


def _row(sid, image, **kw):
    r = {"sample_id": sid, "image_path": image, "dataset": "biwi", "width": 640, "height": 480,
         "bbox": np.array([100, 100, 200, 200], float)}
    r.update(kw)
    return r


def biwi_rows(subject_of=lambda seq: BIWI_PERSON[seq]):
    """24 sequences of uneven length (12..58 frames), subject from the BIWI map."""
    rows = []
    for i in range(1, 25):
        seq = f"{i:02d}"
        for f in range(10 + (i * 7) % 49):
            rows.append(_row(f"biwi/{seq}/{f:05d}", f"hpdb/{seq}/frame_{f:05d}_rgb.png", subject=subject_of(seq),
                             sequence=seq, frame=f))
    return rows


@pytest.fixture(scope="module")
def biwi():
    return manifests.rows_to_table(biwi_rows())


def test_biwi_map_matches_conventions():
    assert len(BIWI_PERSON) == 24 and len(set(BIWI_PERSON.values())) == 20
    for a, b in TWICE:
        assert BIWI_PERSON[a] == BIWI_PERSON[b]
    assert BIWI_PERSON["07"] == "M01" and BIWI_PERSON["24"] == "M14"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 42])
def test_by_subject_keeps_people_and_biwi_twins_together(biwi, seed):
    train, test, info = split_table(biwi, "subject", 0.3, seed)
    s_train, s_test = set(train.column("subject").to_pylist()), set(test.column("subject").to_pylist())
    assert not s_train & s_test and s_train | s_test == set(BIWI_PERSON.values())
    seq_train, seq_test = set(train.column("sequence").to_pylist()), set(test.column("sequence").to_pylist())
    for a, b in TWICE:
        assert (a in seq_test) == (b in seq_test) and (a in seq_train) == (b in seq_train)
    assert info["subjects_on_both_sides"] == []
    assert info["subjects"] == {"train": sorted(s_train), "test": sorted(s_test)}
    assert train.num_rows + test.num_rows == biwi.num_rows
    assert set(train.column("split").to_pylist()) == {"train"} and set(test.column("split").to_pylist()) == {"test"}
    # whole people move, so the share can miss 0.3 by at most one person's rows
    biggest = max(np.unique(biwi.column("subject").to_pylist(), return_counts=True)[1])
    assert abs(test.num_rows / biwi.num_rows - 0.3) <= biggest / biwi.num_rows
    assert abs(info["test_fraction_rows"] - 0.3) < 0.05


def test_deterministic_and_seed_dependent(biwi):
    ids = lambda t: tuple(sorted(t.column("sample_id").to_pylist()))  # noqa: E731
    a = ids(split_table(biwi, "subject", 0.3, 5)[1])
    assert a == ids(split_table(biwi, "subject", 0.3, 5)[1])
    # row order does not matter either
    shuffled = biwi.take(np.random.default_rng(0).permutation(biwi.num_rows))
    assert a == ids(split_table(shuffled, "subject", 0.3, 5)[1])
    others = {ids(split_table(biwi, "subject", 0.3, s)[1]) for s in range(6)}
    assert len(others) >= 4


def test_by_sequence_reports_leaked_people(biwi):
    for seed in range(50):
        train, test, info = split_table(biwi, "sequence", 0.3, seed)
        seq_test = set(test.column("sequence").to_pylist())
        if ("02" in seq_test) != ("21" in seq_test):
            assert "F02" in info["subjects_on_both_sides"]
            return
    pytest.fail("no seed in 0..49 split sequences 02 and 21 apart")


def test_null_or_missing_column_is_an_error(biwi):
    rows = biwi_rows()
    rows[3]["subject"] = None
    with pytest.raises(SplitError, match=r"subject.*null in 1 row.*biwi/01/00003"):
        split_table(manifests.rows_to_table(rows), "subject", 0.3, 0, source="x.parquet")
    no_seq = manifests.rows_to_table([{k: v for k, v in r.items() if k not in ("sequence", "frame")}
                                      for r in biwi_rows()])
    with pytest.raises(SplitError, match="'sequence' is missing"):
        split_table(no_seq, "sequence", 0.3, 0)


def test_sequence_numbers_as_subjects_are_rejected():
    # the seed project's mistake: one "subject" per video puts F02 (02 and 21) on both sides
    table = manifests.rows_to_table(biwi_rows(subject_of=lambda seq: seq))
    with pytest.raises(SplitError, match="F02"):
        split_table(table, "subject", 0.3, 0)


def test_by_image_keeps_faces_and_derived_copies_together():
    rows = []
    for i in range(40):
        img = f"imgs/{i:03d}.jpg"
        rows.append(_row(f"{i:03d}_0", img, dataset="aflw2000", subject=None))
        if i % 3 == 0:  # a second face in the same image
            rows.append(_row(f"{i:03d}_1", img, dataset="aflw2000", subject=None))
        if i % 4 == 0:  # a rotated copy saved as a new image, and a flip of the rotated copy
            rows.append(_row(f"{i:03d}_0_r30", f"rot/{i:03d}_r30.jpg", dataset="aflw2000", parent_id=f"{i:03d}_0"))
            rows.append(_row(f"{i:03d}_0_r30_f", f"flip/{i:03d}.jpg", dataset="aflw2000", parent_id=f"{i:03d}_0_r30"))
    table = manifests.rows_to_table(rows)
    train, test, info = split_table(table, "image", 0.25, 3)
    side = {sid: "test" for sid in test.column("sample_id").to_pylist()}
    side.update({sid: "train" for sid in train.column("sample_id").to_pylist()})
    for i in range(40):
        group = [s for s in side if s.startswith(f"{i:03d}_")]
        assert len({side[s] for s in group}) == 1, group
    assert set(info["groups"]["test"]).isdisjoint(info["groups"]["train"])
    assert all(g.startswith("imgs/") for g in info["groups"]["test"] + info["groups"]["train"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=2, max_size=40), st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_assign_fraction_property(sizes, frac, seed):
    keys = np.array([f"g{i}" for i, n in enumerate(sizes) for _ in range(n)], dtype=object)
    test = assign(keys, frac, seed)
    n = len(keys)
    assert 0 < test.sum() < n  # both sides non-empty
    for g in set(keys):  # whole groups
        assert len(set(test[keys == g])) == 1
    assert abs(test.sum() - frac * n) <= max(sizes) + 1e-9


def test_split_manifest_files_and_paths(tmp_path):
    src_dir = tmp_path / "data"
    src = manifests.write(biwi_rows(), src_dir / "biwi.parquet")
    out = tmp_path / "splits" / "p2"
    info = split_manifest(src, out, by="subject", test_fraction=0.3, seed=11)
    train, test = manifests.read(out / "train.parquet"), manifests.read(out / "test.parquet")
    ids_tr, ids_te = set(train.column("sample_id").to_pylist()), set(test.column("sample_id").to_pylist())
    all_ids = set(manifests.read(src).column("sample_id").to_pylist())
    assert ids_tr.isdisjoint(ids_te) and ids_tr | ids_te == all_ids
    rec = json.loads((out / "split.json").read_text())
    assert rec["seed"] == 11 and rec["by"] == "subject" and rec == json.loads(json.dumps(info))
    assert set(rec["subjects"]["test"]) == set(test.column("subject").to_pylist())
    # relative image paths still point at the same files from the new folder
    orig = {r["sample_id"]: r["image_path"] for r in manifests.read(src).to_pylist()}
    for r in test.to_pylist()[:20]:
        new = os.path.normpath(manifests.resolve_image(out / "test.parquet", r["image_path"]))
        assert new == os.path.normpath(src_dir / orig[r["sample_id"]])


def test_cli_split(tmp_path):
    from cli.data import main

    src = manifests.write(biwi_rows(), tmp_path / "biwi.parquet")
    res = CliRunner().invoke(main, ["split", "--manifest", str(src), "--by", "subject", "--seed", "4",
                                    "--test-fraction", "0.3", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "train.parquet").exists() and (tmp_path / "s" / "split.json").exists()
    res = CliRunner().invoke(main, ["split", "--manifest", str(src), "--by", "sequence", "--seed", "0",
                                    "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    rows = biwi_rows()
    rows[0]["subject"] = None
    bad = manifests.write(rows, tmp_path / "bad.parquet")
    res = CliRunner().invoke(main, ["split", "--manifest", str(bad), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "null" in res.output and "Traceback" not in res.output
