"""What iclft writes while it works: log messages, progress, and the warnings it silences.

One logger, ``iclft`` (library modules log through ``logging.getLogger(__name__)``), set up once
by :func:`configure`: a rich handler when stderr is a terminal, plain timestamped lines
otherwise (Slurm, ``nohup``, a pipe), and optionally a log file with the same lines, as
lm-evaluation-harness' and the Hugging Face Trainer's ``--log-file``/verbosity conventions do.

Progress (:func:`progress`) is a rich bar on a terminal. Elsewhere a bar would only appear once
finished, so each task logs a plain line instead (logger ``iclft.progress``, level INFO) when it
starts, when its description changes, and every :data:`PLAIN_LINES`-th of its total: a steady
rate counted in items, not in seconds, so the same run always prints the same lines. The log
file gets these lines on a terminal too.

:data:`KNOWN_WARNINGS` is the one list of third-party warnings iclft silences; each says why it
cannot be fixed at its source here.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rich.console import Console

#: the logger every iclft module's logger descends from
LOGGER = "iclft"
#: the logger of plain progress lines (dropped on a terminal, where the bar shows progress)
PROGRESS_LOGGER = "iclft.progress"
#: a logger for the log file only (what the screen already shows in its own form: the CLI's
#: error line)
FILE_ONLY = "iclft.file"
#: a plain progress line every 1/PLAIN_LINES of a task's total (every 5%)
PLAIN_LINES = 20
#: verbosity names (``-q``, default, ``-v``) and their logging levels
LEVELS = {"quiet": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class KnownWarning:
    """A third-party warning iclft silences: its category, a regular expression matched at the
    start of its message, and why it cannot be fixed where it is raised."""

    category: type[Warning]
    message: str
    why: str


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        "peft (0.21) reads the attribute transformers 5 deprecated when it wraps a model "
        "for LoRA; iclft never reads it",
    ),
)


def filter_known_warnings() -> None:
    """Silence :data:`KNOWN_WARNINGS` (idempotent: ``warnings`` keeps one copy of a filter)."""
    for w in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=w.message, category=w.category)


# --------------------------------------------------------------------------------------------
# Handlers

_console: Console | None = None
_installed: list[tuple[logging.Logger, logging.Handler]] = []


def console() -> Console:
    """The stderr console that log records and progress bars share (a bar stays below the
    records printed while it runs)."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def interactive() -> bool:
    """Whether stderr is a terminal that can redraw a progress bar."""
    return console().is_terminal


class _Drop(logging.Filter):
    """Keeps a screen handler off the records of some loggers."""

    def __init__(self, *names: str):
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name not in self.names


def configure(level: int | str = logging.INFO, log_file: Path | str | None = None) -> None:
    """Set up the ``iclft`` logger: a rich handler on a terminal (progress lines dropped, the
    bar shows them), plain lines elsewhere, and ``log_file`` (appended to) with plain lines.
    Under ``accelerate launch`` the other processes than rank 0 log warnings only and write no
    file (the Trainer's ``log_level_replica``).

    Python warnings and transformers' messages follow: warnings are logged (so the log file
    has them), transformers logs info at DEBUG and only errors when quiet, and its own tqdm
    bars (weights loading) are off where they cannot redraw. Calling it again replaces what an
    earlier call installed."""
    from rich.logging import RichHandler

    from iclft import distributed

    level = LEVELS[level] if isinstance(level, str) else int(level)
    if not distributed.is_main():  # replicas: warnings only, and rank 0 alone writes the file
        level, log_file = max(level, logging.WARNING), None
    global _console
    reset()
    _console = Console(stderr=True)
    plain = logging.Formatter(PLAIN_FORMAT, DATE_FORMAT)
    if interactive():
        screen: logging.Handler = RichHandler(
            console=_console, show_path=False, log_time_format="[%X]", markup=False
        )
        screen.addFilter(_Drop(PROGRESS_LOGGER, FILE_ONLY))
    else:
        screen = logging.StreamHandler(sys.stderr)
        screen.setFormatter(plain)
        screen.addFilter(_Drop(FILE_ONLY))
    handlers = [screen]
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(path, mode="a", encoding="utf-8")
        to_file.setFormatter(plain)
        handlers.append(to_file)
    logging.captureWarnings(True)
    for name in (LOGGER, "py.warnings"):
        logger = logging.getLogger(name)
        logger.setLevel(level if name == LOGGER else logging.WARNING)
        logger.propagate = False
        for h in handlers:
            logger.addHandler(h)
            _installed.append((logger, h))
    filter_known_warnings()
    _configure_transformers(level, bars=interactive() and level <= logging.INFO)


def reset() -> None:
    """Undo :func:`configure`: remove and close its handlers (the log file), give the loggers
    back to the root logger's configuration, and stop logging warnings."""
    for logger, handler in _installed:
        logger.removeHandler(handler)
        handler.close()
    _installed.clear()
    for name in (LOGGER, "py.warnings"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    logging.captureWarnings(False)


def to_file(level: int, message: str) -> None:
    """Log ``message`` to the log file only, if :func:`configure` opened one (the screen
    already showed it in its own form, like the CLI's red error line)."""
    if any(isinstance(h, logging.FileHandler) for _, h in _installed):
        logging.getLogger(FILE_ONLY).log(level, "%s", message)


def _configure_transformers(level: int, bars: bool) -> None:
    """transformers' verbosity and tqdm bars; through its environment variables when it is not
    imported yet (most commands import it lazily)."""
    verbosity = "info" if level <= logging.DEBUG else "error" if level > logging.INFO else None
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(hf_logging.log_levels[verbosity or "warning"])
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        return
    if verbosity is not None:
        os.environ["TRANSFORMERS_VERBOSITY"] = verbosity
    if not bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def quiet() -> bool:
    """Whether the ``iclft`` logger was set above INFO (``-q``): no progress then."""
    return logging.getLogger(LOGGER).level > logging.INFO


# --------------------------------------------------------------------------------------------
# Progress


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class Task:
    """One progress task: :meth:`advance` or :meth:`update` it; its plain lines go to the
    ``iclft.progress`` logger."""

    def __init__(self, owner: Progress, description: str, total: int, note: str = ""):
        self.owner, self.description, self.total, self.note = owner, description, total, note
        self.completed = 0
        self.every = max(1, math.ceil(total / PLAIN_LINES))
        self.started = time.monotonic()
        self.id = None
        if owner.bar is not None:
            self.id = owner.bar.add_task(description, total=total, note=note)
        self._line()

    def advance(self, n: int = 1) -> None:
        self.update(completed=self.completed + n)

    def update(
        self,
        *,
        completed: int | None = None,
        description: str | None = None,
        note: str | None = None,
    ) -> None:
        """Set the count, the description or the note (the text after the count: a loss)."""
        before = self.completed
        renamed = description is not None and description != self.description
        if completed is not None:
            self.completed = completed
        if description is not None:
            self.description = description
        if note is not None:
            self.note = note
        if self.id is not None and self.owner.bar is not None:
            self.owner.bar.update(
                self.id, completed=self.completed, description=self.description, note=self.note
            )
        crossed = self.completed // self.every > before // self.every
        finished = self.completed >= self.total > before
        if renamed or crossed or finished:
            self._line()

    def remove(self) -> None:
        if self.id is not None and self.owner.bar is not None:
            self.owner.bar.remove_task(self.id)
            self.id = None

    def _line(self) -> None:
        """``eval boolean 120/240 (50%) loss 0.31, 0:01:02 elapsed, eta 0:01:02``."""
        if not self.owner.enabled:
            return
        done, total = self.completed, self.total
        pct = f" ({100 * done // total}%)" if total else ""
        note = f" {self.note}" if self.note else ""
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < done < total:
            eta = f", eta {_clock(elapsed / done * (total - done))}"
        logging.getLogger(PROGRESS_LOGGER).info(
            "%s %d/%d%s%s, %s elapsed%s", self.description, done, total, pct, note,
            _clock(elapsed), eta,
        )  # fmt: skip


class Progress:
    """Progress of one piece of work, with any number of tasks (:meth:`task`).

    ``enabled=False`` (another process than rank 0, ``show_progress=False``) or ``-q`` shows
    nothing. Use as a context manager."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and not quiet()
        self.bar = None
        if self.enabled and interactive():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console(),
            )

    def task(self, description: str, total: int, note: str = "") -> Task:
        return Task(self, description, max(int(total), 0), note)

    def start(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """``with progress() as p: t = p.task("eval", total); t.advance(k)``."""
    with Progress(enabled) as p:
        yield p
