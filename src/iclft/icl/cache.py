"""An opt-in on-disk cache of model responses, so re-running an evaluation (or a config that
shares cells with an earlier one) does not recompute them.

Like lm-evaluation-harness's ``--use_cache``, but keyed by what determines a response rather than
by a path: the model's weights hash (a fine-tuned or adapted model has its own), its tokenizer,
dtype, device type and attention implementation, the request type, the exact prompt text and the
request's settings (the candidates of a loglik request; the token budget and stop rule of a
generate request). A changed model, tokenizer or setting is a different key, so nothing stale
is ever returned. A cached response is the one computed the first time: recomputing in another
batch could move a log-probability in its last bits, never a greedy answer on these tasks.

Stored in SQLite (Python's ``sqlite3``, write-ahead log, a busy timeout), so several processes
may read and write one cache file at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from iclft.errors import UserError

_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_BUSY_TIMEOUT_S = 600.0  # how long a writer waits for another process's transaction


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, merges, normaliser, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    extra = json.dumps(
        [getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)]
    )
    return hashlib.sha256((text + extra).encode()).hexdigest()


class ResponseCache:
    """Responses of one loaded model, in the SQLite file ``path`` (created if missing)."""

    def __init__(self, path: Path | str, model_key: str):
        self.path = Path(path)
        self.model_key = model_key
        self.hits = self.misses = 0
        # switching a new file to WAL can fail at once with "database is locked" while another
        # process is setting it up too (SQLite's busy handler does not cover it): try again
        # until that process is done, up to the busy timeout
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        self._db = None
        while True:
            if self._db is not None:  # a failed attempt's connection
                self._db.close()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_S)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(_SCHEMA)
                self._db.commit()
                break
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise UserError(
                        f"cannot open the response cache {str(self.path)!r}: {exc}"
                    ) from None
                time.sleep(0.05)
            except (OSError, sqlite3.Error) as exc:
                raise UserError(
                    f"cannot open the response cache {str(self.path)!r}: {exc}"
                ) from None

    @classmethod
    def for_model(cls, path: Path | str, loaded) -> ResponseCache:
        """The cache of a :class:`~iclft.models.LoadedModel` (its weights must be hashed)."""
        sha = loaded.resolved.weights_sha256
        if not sha:
            raise UserError(
                f"the response cache needs the model's weights hash, and {loaded.resolved.spec!r} "
                "has none; run without the cache"
            )
        key = json.dumps(
            {
                "weights_sha256": sha,
                "tokenizer": tokenizer_fingerprint(loaded.tokenizer),
                "dtype": str(loaded.dtype),
                "device": getattr(loaded.device, "type", str(loaded.device)),
                "attn": loaded.attn_implementation,
            },
            sort_keys=True,
        )
        return cls(path, hashlib.sha256(key.encode()).hexdigest())

    def close(self) -> None:
        self._db.close()

    # ----- keys and rows ----------------------------------------------------------------
    def key(self, request: str, prompt: str, settings: Any) -> str:
        body = json.dumps([self.model_key, request, prompt, settings], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk
            ).fetchall()
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        with self._db:  # one transaction
            self._db.executemany(
                "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    # ----- requests ---------------------------------------------------------------------
    def cached(
        self,
        request: str,
        prompts: Sequence[str],
        settings: Sequence[Any],
        compute: Callable[[list[int]], list[Any]],
        progress: Callable[[int], None] | None = None,
        *,
        agree: Callable[[list[int]], list[int]] | None = None,
        store: bool = True,
    ) -> list[Any]:
        """Each prompt's response: from the cache where present, else ``compute(indices)`` for
        the missing ones (in prompt order), which are then stored (unless ``store`` is false).

        ``agree`` (several processes) maps this process's missing indices to the set all of
        them compute, so every process makes the same call however their lookups raced."""
        keys = [self.key(request, p, s) for p, s in zip(prompts, settings)]
        found = self.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if agree is not None:
            missing = agree(missing)
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if progress and len(prompts) > len(missing):
            progress(len(prompts) - len(missing))
        if missing:
            new = compute(missing)
            fresh = {keys[i]: v for i, v in zip(missing, new)}
            if store:
                self.put_many(fresh)
            found.update(fresh)
        return [found[k] for k in keys]
