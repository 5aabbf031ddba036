"""Reading and writing example files (JSONL, one example per line; or Parquet)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from iclft.errors import UnknownNameError, UserError
from iclft.store import atomic_writer, read_jsonl
from iclft.tasks.base import Example

FORMATS = ("jsonl", "parquet")


def write_examples(path: Path, examples: Sequence[Example], fmt: str = "jsonl") -> Path:
    """Write atomically; Parquet keeps ``meta`` as a JSON string column (its shape varies)."""
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserError(f"output {str(path)!r} is a directory; give a file path")
    if fmt == "jsonl":
        with atomic_writer(path) as f:
            for ex in examples:
                f.write(ex.to_json() + "\n")
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [ex.to_dict() for ex in examples]
    for r in rows:
        r["meta"] = json.dumps(r["meta"], ensure_ascii=False)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("task", pa.string()),
            ("variant", pa.string()),
            ("question", pa.string()),
            ("target", pa.string()),
            ("shortcut_target", pa.string()),
            ("choices", pa.list_(pa.string())),
            ("meta", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_writer(path, "wb") as f:
        pq.write_table(table, f)
    return path


def read_examples(path: Path) -> list[Example]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"example file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for r in rows:
            r["meta"] = json.loads(r["meta"]) if r.get("meta") else {}
        return [Example.from_dict(r) for r in rows]
    return [Example.from_dict(r) for r in read_jsonl(path)]
