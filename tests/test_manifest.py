"""Manifest v1 I/O: schema, version metadata, atomic writes, validation messages, concat, part folders."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import manifests
from manifests.schema import LIST_LENGTHS, OPTIONAL, REQUIRED, VERSION, VERSION_KEY
from hpe_data import pose


def row(sid="a", **kw) -> dict:
    r = dict(sample_id=sid, image_path=f"img/{sid}.jpg", dataset="t", subject="s1", width=64, height=48,
             bbox=np.array([1.0, 2.0, 30.0, 40.0]))
    r.update(kw)
    return r


def full_row(sid="a") -> dict:
    R = pose.to_matrix(10.0, -20.0, 5.0)
    return row(sid, landmarks=np.arange(136, dtype=np.float64) / 4, landmarks_3d=np.arange(204, dtype=np.float64),
               landmark_visible=np.arange(68) % 3 > 0, landmarks_source="fitted", yaw=-20.0, pitch=10.0, roll=5.0,
               rotation=R.reshape(9), in_range=True, translation=np.array([1.0, 2.0, 900.0]),
               camera=np.array([500.0, 500.0, 320.0, 240.0]), parent_id=None, augment='[{"op": "flip"}]',
               flipped=True, frame=7, sequence="12", custom_score=0.5)


def test_schema_order_types_and_version(tmp_path):
    p = manifests.write([full_row("b"), full_row("a")], tmp_path / "m.parquet")
    t = pq.read_table(p)
    assert t.schema.metadata[VERSION_KEY] == VERSION.encode() == b"1"
    names = t.column_names
    assert names[: len(REQUIRED)] == list(REQUIRED)  # required columns first, in schema order
    opt = [n for n in names if n in OPTIONAL]
    assert opt == [n for n in OPTIONAL if n in opt] == ["flipped", "sequence", "frame"]
    assert names[-1] == "custom_score"  # unknown extras kept, last
    for n in names:
        if n in REQUIRED:
            assert t.schema.field(n).type == REQUIRED[n][0], n
    assert t.schema.field("frame").type == pa.int32()
    assert LIST_LENGTHS["landmarks"] == 136 and LIST_LENGTHS["rotation"] == 9 and LIST_LENGTHS["landmark_visible"] == 68


def test_round_trip_values(tmp_path):
    src = full_row("a")
    p = manifests.write([src, row("b")], tmp_path / "m.parquet")
    a, b = manifests.read_rows(p)
    np.testing.assert_allclose(a["rotation"], src["rotation"])  # float64 kept exactly
    np.testing.assert_allclose(a["landmarks"], src["landmarks"], rtol=1e-6)  # float32 on disk
    assert a["landmark_visible"].dtype == bool and (a["landmark_visible"] == src["landmark_visible"]).all()
    assert a["flipped"] is True and a["frame"] == 7 and a["custom_score"] == 0.5
    assert b["landmarks"] is None and b["rotation"] is None and b["yaw"] is None and b["flipped"] is None
    t = manifests.read(p)
    R = manifests.to_numpy(t, "rotation")
    assert R.shape == (2, 9) and np.isnan(R[1]).all() and not np.isnan(R[0]).any()
    vis = manifests.to_numpy(t, "landmark_visible")
    assert vis.dtype == bool and not vis[1].any()


def test_to_numpy_on_a_sliced_table(tmp_path):
    rows = [row(str(i), landmarks=np.full(136, float(i)) if i % 2 else None) for i in range(6)]
    t = manifests.read(manifests.write(rows, tmp_path / "m.parquet")).slice(3, 2)  # rows "3", "4"
    lm = manifests.to_numpy(t, "landmarks")
    assert (lm[0] == 3.0).all() and np.isnan(lm[1]).all()


@pytest.mark.parametrize("mutate,column", [
    (lambda r: r.pop("image_path"), "image_path"),
    (lambda r: r.update(width=None), "width"),
    (lambda r: r.update(bbox=np.array([5.0, 2.0, 1.0, 40.0])), "bbox"),
    (lambda r: r.update(bbox=np.array([np.nan, 2.0, 1.0, 40.0])), "bbox"),
    (lambda r: r.update(rotation=np.arange(9.0)), "rotation"),
    (lambda r: r.update(landmarks=np.zeros(10)), "landmarks"),
    (lambda r: r.update(width="wide"), "width"),
])
def test_validation_names_the_bad_column(tmp_path, mutate, column):
    bad = row("x")
    mutate(bad)
    out = tmp_path / "m.parquet"
    with pytest.raises(manifests.ManifestError) as e:
        manifests.write([row("a"), bad], out)
    assert column in str(e.value)
    assert not out.exists() and os.listdir(tmp_path) == []  # nothing written, no temp file left


def test_duplicate_sample_id(tmp_path):
    with pytest.raises(manifests.ManifestError, match="sample_id.*'a'"):
        manifests.write([row("a"), row("b"), row("a")], tmp_path / "m.parquet")


def test_read_rejects_other_versions_and_missing_columns(tmp_path):
    t = manifests.rows_to_table([row("a")])
    p = tmp_path / "v2.parquet"
    pq.write_table(t.replace_schema_metadata({VERSION_KEY: b"2"}), p)
    with pytest.raises(manifests.ManifestError, match="version 2") as e:
        manifests.read(p)
    assert str(p) in str(e.value)
    p = tmp_path / "nodataset.parquet"
    pq.write_table(t.drop(["dataset"]), p)
    with pytest.raises(manifests.ManifestError, match="dataset"):
        manifests.read(p)
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet")
    with pytest.raises(manifests.ManifestError, match="not a readable Parquet"):
        manifests.read(p)
    with pytest.raises(manifests.ManifestError, match="no such manifest"):
        manifests.read(tmp_path / "absent.parquet")


def test_castable_types_are_accepted(tmp_path):
    """A writer using int64 / float64 where v1 says int32 / float32 is cast, not rejected."""
    t = manifests.rows_to_table([row("a")])
    t = t.set_column(t.column_names.index("width"), "width", t.column("width").cast(pa.int64()))
    p = tmp_path / "m.parquet"
    pq.write_table(t, p)
    assert manifests.read(p).schema.field("width").type == pa.int32()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    p = manifests.write([row("a")], tmp_path / "m.parquet")
    before = p.read_bytes()

    def broken(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        manifests.write([row("b")], p)
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.parquet"]  # the temp file is gone


def test_concat_fills_missing_optional_columns():
    a = manifests.rows_to_table([row("a", flipped=True)])
    b = manifests.rows_to_table([row("b", frame=3, note=None)])
    c = manifests.rows_to_table([row("c", note="x")])
    t = manifests.concat([a, b, c])
    assert t.num_rows == 3 and t.schema.metadata[VERSION_KEY] == b"1"
    assert t.column("flipped").to_pylist() == [True, None, None]
    assert t.column("frame").to_pylist() == [None, 3, None]
    assert t.column("note").to_pylist() == [None, None, "x"] and t.schema.field("note").type == pa.string()
    manifests.validate(t)


def test_part_folders_and_image_paths(tmp_path):
    out = tmp_path / "data" / "all.parquet"
    for i, ids in enumerate((["c", "a"], ["b"])):
        manifests.write([row(s) for s in ids], manifests.part_path(out, i, 2))
    folder = manifests.parts_dir(out)
    assert folder.name == "all.parquet.parts"
    assert manifests.part_path(out, 1, 2).name == "part-00001-of-00002.parquet"
    (folder / ".part-00002-of-00002.parquet.tmp-1").write_bytes(b"partial")  # a writer's temp file is ignored
    assert manifests.read(folder).num_rows == 3
    merged = manifests.merge([folder], out)
    assert manifests.read(merged).column("sample_id").to_pylist() == ["a", "b", "c"]
    # relative image paths resolve against the folder of X.parquet for the file, the parts folder and a part file
    want = tmp_path / "data" / "img" / "a.jpg"
    assert manifests.resolve_image(out, "img/a.jpg") == want
    assert manifests.resolve_image(folder, "img/a.jpg") == want
    assert manifests.resolve_image(manifests.part_path(out, 0, 2), "img/a.jpg") == want
    assert manifests.resolve_image(out, "/abs/x.jpg") == manifests.resolve_image(folder, "/abs/x.jpg")
    assert str(manifests.resolve_image(out, "/abs/x.jpg")) == "/abs/x.jpg"
    (tmp_path / "empty").mkdir()
    with pytest.raises(manifests.ManifestError, match="no .parquet"):
        manifests.read(tmp_path / "empty")


def test_relative_image_path(tmp_path):
    img = tmp_path / "ds" / "x" / "a.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"")
    out = tmp_path / "m" / "all.parquet"
    rel = manifests.relative_image_path(out, img)
    assert rel == os.path.join("..", "ds", "x", "a.jpg")
    assert manifests.resolve_image(out, rel).resolve() == img.resolve()
