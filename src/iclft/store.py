"""Writing results safely: atomic file writes, appended JSON lines, and the run manifest.

Every file is written to a temporary sibling and renamed into place, so a reader never sees a
half-written file and a killed process never corrupts what was there before (the runner rebuilds
``results.jsonl`` this way after each stage). ``read_jsonl`` ignores a trailing line without its
newline, the mark of a write cut short. A write that fails (a full disk) raises
:class:`WriteError`, one line naming the file, and leaves the previous file as it was.

:func:`dir_lock` makes a directory single-writer: a second process that tries to write the same
run directory is refused with the holder's pid.

:func:`claim_output_dir` decides whether a command may write a directory at all: each output
directory carries a small owner file (:data:`OWNER_NAME`) naming the command kind that wrote it.
A command writes a new or empty directory, or one it wrote itself (resumed or replaced whole);
a non-empty directory of anyone else (another command kind, or not iclft's) is refused in one
line unless ``force``, and then its contents are moved aside to ``DIR.replaced-N``, never
deleted. Files are created with the permissions the umask allows (``0o666 & ~umask``), as
``open`` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from iclft.errors import UserError
from iclft.faults import kill_point
from iclft.records import Record

LOCK_NAME = ".iclft.lock"
MANIFEST_NAME = "manifest.json"
#: the owner file of an output directory: ``{"command": KIND}``, the command kind that wrote it
OWNER_NAME = ".iclft-output.json"
#: suffixes that name a file, not a directory: ``-o out.csv`` is refused rather than made a
#: directory called out.csv
FILE_SUFFIXES = frozenset(
    ".csv .tsv .json .jsonl .txt .log .md .html .yaml .yml .parquet .png .pdf .svg .zip .gz "
    ".tar .pt .bin .safetensors .gguf .npz .npy .pkl".split()
)


class WriteError(UserError):
    """A file could not be written (disk full, I/O error); the previous version is intact."""


class DirectoryBusy(UserError):
    """Another process holds the directory's lock."""


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise a one-line error saying why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {str(path)!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output directory {str(path)!r} is not writable")
    return path


def _open_temp(fd: int, mode: str, path: Path):
    """The file object an atomic write of ``path`` goes through (tests replace it to simulate a
    full disk)."""
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def dir_entries(path: Path) -> list[Path]:
    """What ``path`` holds besides iclft's lock and owner files (``[]`` if it does not exist)."""
    path = Path(path)
    skip = (LOCK_NAME, OWNER_NAME)
    return [p for p in path.iterdir() if p.name not in skip] if path.is_dir() else []


#: files whose presence marks a directory written by an iclft version before owner files,
#: with the command kind that wrote it (the manifest's ``command`` is read first)
_LEGACY_MARKS = (
    ("stages", "run"),
    ("train_config.json", "finetune"),
    ("iclft_export.json", "export lm-eval"),
)


def output_owner(path: Path) -> str | None:
    """The command kind that wrote directory ``path``: its owner file's, else (directories
    written before owner files) its manifest's ``command``, else one of the files only a kind
    writes; ``None`` for a directory iclft did not write (or an empty one)."""
    path = Path(path)
    for name in (OWNER_NAME, MANIFEST_NAME):
        try:
            kind = json.loads((path / name).read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(kind, str):
            return kind
    for name, kind in _LEGACY_MARKS:
        if (path / name).exists():
            return kind
    return None


@dataclass(frozen=True)
class OutputClaim:
    """What :func:`claim_output_dir` found: ``state`` is ``new`` (a new or empty directory),
    ``own`` (an earlier output of the same command kind: resume it or :meth:`clear` it) or
    ``moved`` (another's contents, moved aside to ``moved_to`` under ``force``)."""

    path: Path
    kind: str
    state: str
    moved_to: Path | None = None

    def clear(self, keep: Iterable[Path | str | None] = ()) -> None:
        """Remove an earlier output of this kind (the whole of it, so nothing old mixes with
        the new); the owner file stays, and so does any entry holding a path of ``keep`` (a
        response cache the user keeps there)."""
        kept = [Path(k).resolve() for k in keep if k is not None]
        for p in dir_entries(self.path):
            here = p.resolve()
            if any(k == here or here in k.parents for k in kept):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def check_output_path(path: Path) -> Path:
    """Refuse an output directory that is an existing file, or a new name that looks like a
    file's (``-o out.csv``: the output is a directory of files, not one file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"-o {path} is an existing file; the output must be a directory")
    if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
        raise UserError(
            f"-o {path} looks like a file name ({path.suffix}); the output is a directory of "
            f"files (results.jsonl, manifest.json...): give a directory, e.g. -o {path.stem}"
        )
    return path


def move_aside(path: Path) -> Path:
    """Move everything in ``path`` (but its lock) into a new sibling ``PATH.replaced-N`` (the
    first N free) and return it: nothing is deleted."""
    path = Path(path)
    n = 1
    while (aside := path.with_name(f"{path.name}.replaced-{n}")).exists():
        n += 1
    try:
        aside.mkdir()
        for p in path.iterdir():
            if p.name != LOCK_NAME:
                shutil.move(str(p), str(aside / p.name))
    except OSError as e:
        raise UserError(
            f"cannot move the contents of {path} aside to {aside}: {e.strerror or e}"
        ) from None
    return aside


def _write_owner(path: Path, kind: str) -> None:
    write_json_atomic(path / OWNER_NAME, {"command": kind})


def claim_output_dir(path: Path, kind: str, *, force: bool = False) -> OutputClaim:
    """Check that command ``kind`` (``eval``, ``run``, ``analyze circuits``...) may write the
    output directory ``path``, create it and mark it as ``kind``'s.

    Refused in one line: an existing file, a name that looks like a file (``out.csv``), and a
    non-empty directory written by another command kind or not by iclft, unless ``force``
    (then its contents are moved aside, see :func:`move_aside`). A directory ``kind`` wrote
    itself comes back as ``own``: the caller resumes it or replaces it whole."""
    path = check_output_path(Path(path))
    ensure_writable_dir(path)
    entries = dir_entries(path)
    owner = output_owner(path)
    if not entries:
        _write_owner(path, kind)
        return OutputClaim(path, kind, "own" if owner == kind else "new")
    if owner == kind:
        _write_owner(path, kind)  # a directory written before owner files gets one
        return OutputClaim(path, kind, "own")
    if not force:
        names = sorted(p.name for p in entries)
        found = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        whose = f"`iclft {owner}`" if owner else "something other than iclft"
        raise UserError(
            f"output directory {str(path)!r} is not empty and was written by {whose}, not "
            f"`iclft {kind}` (it holds {found}); give -o a new or empty directory, or --force "
            f"to move its contents aside to {path.name}.replaced-N"
        )
    aside = move_aside(path)
    _write_owner(path, kind)
    return OutputClaim(path, kind, "moved", aside)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` (disk full, I/O error) becomes a one-line :class:`WriteError`.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with _open_temp(fd, mode, path) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux); else
    set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(path: Path, e: OSError) -> WriteError:
    why = e.strerror or str(e) or type(e).__name__
    return WriteError(f"cannot write {path}: {why}; its previous content (if any) is kept")


#: directories whose lock this process holds, with how many callers hold it
_HELD: dict[str, int] = {}


@contextlib.contextmanager
def dir_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on directory ``path`` (``path/.iclft.lock``, fcntl.flock).

    A second process is refused at once with :class:`DirectoryBusy` naming the holder's pid.
    Re-entrant within one process (the lock is the process's, not a caller's). The lock dies
    with the process, so a killed run never leaves a stale lock; the file itself stays.
    """
    path = ensure_writable_dir(check_output_path(Path(path)))
    key = str(path.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    lock = path / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DirectoryBusy(
            f"{path} is in use by another iclft process (pid {holder}); wait for it to end "
            "or use another directory"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        yield
    finally:
        _HELD.pop(key, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def _json_default(obj: Any) -> Any:
    """Records (:mod:`iclft.records`) as their JSON; anything else as its text (paths)."""
    return obj.to_json() if isinstance(obj, Record) else str(obj)


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any] | Record]) -> None:
    """One JSON line per row: a dict, or a record written as its ``to_json()``."""
    with atomic_writer(path) as f:
        for r in rows:
            d = r.to_json() if isinstance(r, Record) else r
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


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
    from iclft._version import __version__

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
    write_json_atomic(Path(out_dir) / MANIFEST_NAME, manifest)
    return manifest
