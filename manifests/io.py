"""Read, validate, write and concatenate manifests (single Parquet file or a folder of part files)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import ALL, LIST_LENGTHS, REQUIRED, VERSION, VERSION_KEY, schema_for

PARTS_SUFFIX = ".parts"


class ManifestError(ValueError):
    """A manifest that does not meet schema v1; the message names the file and the bad column."""


def parts_dir(out: str | os.PathLike) -> Path:
    """Folder holding the part files of a sharded run writing `out`."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def part_path(out: str | os.PathLike, index: int, count: int) -> Path:
    return parts_dir(out) / f"part-{index:05d}-of-{count:05d}.parquet"


def base_dir(path: str | os.PathLike) -> Path:
    """Folder that relative `image_path`s are resolved against.

    A manifest's own folder; for the dataset-folder form (`X.parquet.parts/`) and its part files, the folder
    that holds `X.parquet`, so that merging part files never rewrites paths.
    """
    p = Path(path)
    if p.is_dir():
        return p.parent if p.name.endswith(PARTS_SUFFIX) else p
    return p.parent.parent if p.parent.name.endswith(PARTS_SUFFIX) else p.parent


def resolve_image(manifest_path: str | os.PathLike, image_path: str) -> Path:
    ip = Path(image_path)
    return ip if ip.is_absolute() else base_dir(manifest_path) / ip


def relative_image_path(manifest_out: str | os.PathLike, image: str | os.PathLike) -> str:
    """Path to store in `image_path`: relative to the manifest's base folder when possible."""
    base = base_dir(manifest_out) if Path(manifest_out).exists() else Path(manifest_out).parent
    try:
        return os.path.relpath(Path(image).resolve(), base.resolve())
    except ValueError:  # another drive
        return str(Path(image).resolve())


# ---------------------------------------------------------------- rows -> table


def _column(name: str, values: list, typ: pa.DataType | None) -> pa.Array:
    try:
        return _column_unchecked(name, values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"column {name!r}: {e}") from None


def _column_unchecked(name: str, values: list, typ: pa.DataType | None) -> pa.Array:
    if typ is None:
        return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values])
    if pa.types.is_fixed_size_list(typ):
        n = typ.list_size
        valid = np.array([v is not None for v in values], dtype=bool)
        flat = np.zeros((len(values), n), dtype=typ.value_type.to_pandas_dtype())
        for i, v in enumerate(values):
            if v is not None:
                a = np.asarray(v).reshape(-1)
                if a.size != n:
                    raise ManifestError(f"column {name!r}: expected {n} values per row, got {a.size}")
                flat[i] = a
        child = pa.array(flat.reshape(-1), type=typ.value_type)
        mask = pa.array(~valid) if not valid.all() else None
        return pa.FixedSizeListArray.from_arrays(child, n, mask=mask)
    return pa.array([v.item() if isinstance(v, np.generic) else v for v in values], type=typ)


def rows_to_table(rows: list[Mapping]) -> pa.Table:
    """Rows (dicts of scalars / numpy arrays / None) -> an Arrow table in schema v1 column order."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    schema = schema_for(names)
    extra = [n for n in names if n not in ALL]
    arrays = [_column(f.name, [r.get(f.name) for r in rows], f.type) for f in schema]
    fields = list(schema)
    for n in extra:
        arr = _column(n, [r.get(n) for r in rows], None)
        arrays.append(arr)
        fields.append(pa.field(n, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def table_to_rows(table: pa.Table) -> list[dict]:
    """Table -> list of dicts; fixed-size lists become numpy arrays (None stays None)."""
    cols = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks() if table.num_rows else table.column(name)
        if name in LIST_LENGTHS and table.num_rows:
            arr = to_numpy(table, name)
            valid = np.asarray(col.is_valid())
            cols[name] = [arr[i] if valid[i] else None for i in range(table.num_rows)]
        else:
            cols[name] = col.to_pylist()
    return [{k: cols[k][i] for k in cols} for i in range(table.num_rows)]


def to_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size list column as an (N, k) float/bool array; null rows are NaN (False for bools)."""
    col = table.column(name).combine_chunks()
    n = LIST_LENGTHS.get(name) or col.type.list_size
    vt = col.type.value_type
    # Flattening an array with null parents drops them, so fill from the underlying child with offsets.
    child = col.values
    if pa.types.is_boolean(vt) and child.null_count:  # Parquet marks the slots of null lists null: object dtype
        child = child.fill_null(False)
    values = child.to_numpy(zero_copy_only=False)
    off = col.offset * n
    out = np.array(values[off: off + len(col) * n]).reshape(len(col), n)
    if col.null_count:
        valid = np.asarray(col.is_valid())
        if pa.types.is_boolean(vt):
            out[~valid] = False
        else:
            out = out.astype(np.float64)
            out[~valid] = np.nan
    return out


# ---------------------------------------------------------------- validation


def validate(table: pa.Table, source: str = "manifest") -> pa.Table:
    """Check schema v1; returns the table cast to the canonical types, or raises ManifestError."""
    version = (table.schema.metadata or {}).get(VERSION_KEY)
    if version is not None and version.decode() != VERSION:
        raise ManifestError(f"{source}: manifest version {version.decode()}, this toolkit reads {VERSION}")
    missing = [n for n in REQUIRED if n not in table.column_names]
    if missing:
        raise ManifestError(f"{source}: missing required column(s) {missing}")
    arrays, fields = [], []
    for name in table.column_names:
        col = table.column(name)
        if name in ALL:
            typ, nullable, _ = ALL[name]
            if col.type != typ:
                try:
                    col = col.cast(typ)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise ManifestError(f"{source}: column {name!r} has type {col.type}, expected {typ}: {e}") from None
            if not nullable and col.null_count:
                raise ManifestError(f"{source}: column {name!r} has {col.null_count} null value(s)")
            fields.append(pa.field(name, typ, nullable=nullable))
        else:
            fields.append(table.schema.field(name))
        arrays.append(col)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={VERSION_KEY: VERSION.encode()}))
    ids = table.column("sample_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        dup = pc.value_counts(ids).filter(pc.greater(pc.struct_field(pc.value_counts(ids), "counts"), 1))
        first = dup[0]["values"].as_py() if len(dup) else "?"
        raise ManifestError(f"{source}: column 'sample_id' is not unique (e.g. {first!r})")
    if table.num_rows:
        b = to_numpy(table, "bbox")
        bad = ~np.isfinite(b).all(1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        if bad.any():
            i = int(np.argmax(bad))
            raise ManifestError(f"{source}: column 'bbox' invalid at sample_id {ids[i].as_py()!r}: {b[i].tolist()}")
        if table.column("rotation").null_count < table.num_rows:
            R = to_numpy(table, "rotation").reshape(-1, 3, 3)
            ok = np.isfinite(R).all((1, 2))
            err = np.abs(R[ok] @ np.swapaxes(R[ok], 1, 2) - np.eye(3)).max((1, 2)) if ok.any() else np.zeros(0)
            if (err > 1e-3).any():
                i = int(np.flatnonzero(ok)[np.argmax(err > 1e-3)])
                raise ManifestError(f"{source}: column 'rotation' is not a rotation at sample_id {ids[i].as_py()!r}")
    return table


# ---------------------------------------------------------------- files


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write(rows_or_table, path: str | os.PathLike) -> Path:
    """Validate and write atomically (temp file + rename): a reader never sees a half-written manifest."""
    table = rows_or_table if isinstance(rows_or_table, pa.Table) else rows_to_table(list(rows_or_table))
    path = Path(path)
    table = validate(table, str(path))
    _atomic_write_table(table, path)
    return path


def part_files(path: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(path).glob("*.parquet") if not p.name.startswith("."))


def read(path: str | os.PathLike, columns: list[str] | None = None, validate_rows: bool = True) -> pa.Table:
    """Read a manifest file or a folder of part files; validation errors name the file and column."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest")
    files = part_files(path) if path.is_dir() else [path]
    if not files:
        raise ManifestError(f"{path}: folder holds no .parquet part files")
    tables = []
    for f in files:
        try:
            t = pq.read_table(f, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise ManifestError(f"{f}: not a readable Parquet file ({e})") from None
        tables.append(validate(t, str(f)) if validate_rows and columns is None else t)
    return concat(tables) if len(tables) > 1 else tables[0]


def read_rows(path: str | os.PathLike) -> list[dict]:
    return table_to_rows(read(path))


def concat(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate manifests whose optional columns may differ (missing ones become null)."""
    tables = list(tables)
    names: dict[str, pa.Field] = {}
    for t in tables:
        for f in t.schema:
            # an all-null extra column is typed `null` in its table: a typed one elsewhere decides the type
            if f.name not in names or pa.types.is_null(names[f.name].type):
                names[f.name] = f
    out = []
    for t in tables:
        cols = [(t.column(n) if t.column(n).type == f.type else t.column(n).cast(f.type)) if n in t.column_names
                else pa.nulls(t.num_rows, type=f.type) for n, f in names.items()]
        out.append(pa.Table.from_arrays(cols, schema=pa.schema(list(names.values()))))
    merged = pa.concat_tables(out)
    return merged.replace_schema_metadata({VERSION_KEY: VERSION.encode()})


def merge(sources: Iterable[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Concatenate manifests or part folders, sort by sample_id (the order every stage writes), write `out`."""
    table = concat([read(s) for s in sources])
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))
    return write(table, out)
