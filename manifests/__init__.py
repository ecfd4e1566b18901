"""Manifest v1: the Parquet contract between hpe_data (writes rows) and hpe_model (reads rows)."""
from .io import (
    ManifestError,
    base_dir,
    concat,
    merge,
    part_files,
    part_path,
    parts_dir,
    read,
    read_rows,
    relative_image_path,
    resolve_image,
    rows_to_table,
    table_to_rows,
    to_numpy,
    validate,
    write,
)
from .schema import ALL, OPTIONAL, REQUIRED, VERSION

__all__ = [
    "ALL", "OPTIONAL", "REQUIRED", "VERSION", "ManifestError", "base_dir", "concat", "merge", "part_files",
    "part_path", "parts_dir", "read", "read_rows", "relative_image_path", "resolve_image", "rows_to_table",
    "table_to_rows", "to_numpy", "validate", "write",
]
