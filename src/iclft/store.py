"""Writing results safely: atomic file writes, appended JSON lines, and the run manifest.

Every file is written to a temporary sibling and renamed into place, so a reader never sees a
half-written file and a killed process never corrupts what was there before (the runner rebuilds
``results.jsonl`` this way after each stage). ``read_jsonl`` ignores a trailing line without its
newline, the mark of a write cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from iclft.errors import UserError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise a one-line error saying why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {str(path)!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output directory {str(path)!r} is not writable")
    return path


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with atomic_writer(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete rows; a trailing line without newline (torn write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    out = []
    for ln, line in enumerate(data.split(b"\n")[:-1] if data else [], 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{ln}: not valid JSON ({e.msg})") from None
    return out


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


_PACKAGES = ("torch", "transformers", "tokenizers", "peft", "accelerate", "numpy", "gguf")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def write_manifest(out_dir: Path, *, command: str, started: float, **fields: Any) -> dict:
    """Write ``out_dir/manifest.json``: versions, git revision, host, timings and ``fields``."""
    from iclft import __version__

    manifest = {
        "iclft_version": __version__,
        "git_revision": _git_revision(),
        "command": command,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 3),
        **fields,
    }
    write_json_atomic(Path(out_dir) / "manifest.json", manifest)
    return manifest
