"""Building k-shot prompts.

A k-shot prompt is the task's instruction line, k clean demonstrations with their answers, then
the query without its answer::

    <instruction>

    <demo 1 question>
    <answer lead> <demo 1 target>

    ...

    <query question>
    <answer lead>

Demonstration modes:

* ``shared``: one fixed ordered list per (task, seed); k shots use its first k items, so every
  shot count's prompt starts with the previous one's demonstrations (the engine reuses the
  key/value cache of that common prefix across queries, shot counts and both variants).
* ``per-query``: fresh demonstrations for each query (the paper's protocol); only the
  instruction line is shared.

Chat templates (``chat``, off by default) wrap the same content in the tokenizer's own chat
template for instruction-tuned models (:class:`ChatFormat`):

* ``turns``: each demonstration is a user turn (its question) and an assistant turn (answer
  lead and target); the instruction opens the first user turn;
* ``single``: one user turn holding the plain prompt's instruction, demonstrations and the
  query's question.

Either way the assistant's turn is opened (the template's generation prompt) and starts with
the answer lead, so the model continues with the answer as in a plain prompt. The prompt text
is the template's exact rendering, less a leading BOS token when the tokenizer adds its own
(so it is not doubled).

Demonstration sets: ``demo_set`` s draws an independent list (shared) or independent
per-query draws (per-query) from its own index range; set 0 is the list iclft always used, so
one set reproduces earlier runs.

Demonstrations come from index ranges that queries never use (the map of every range is in
:mod:`iclft.tasks.splits`), and skip any question in the pool's ``avoid`` (every question the
evaluation scores, :func:`iclft.icl.evaluate.demo_pools`) or equal to the query's, drawing the
next item instead, so a prompt never shows a scored question's answer:

* ``_SHARED_BASE + s * _SHARED_SET_STRIDE ..``: demonstration set s, shared mode;
* ``_PER_QUERY_BASE * (1 + variant) + s * _PER_QUERY_SET_STRIDE + query * stride ..``:
  demonstration set s of one query, per-query mode (held-out queries use the variant slot
  after the last); skipped items are replaced from ``_PER_QUERY_SPILL`` above that slot.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from iclft.errors import UnknownNameError, UserError
from iclft.tasks.base import VARIANTS, Example, Task
from iclft.tasks.splits import draw

DEMO_MODES = ("shared", "per-query")
CHAT_MODES = ("none", "turns", "single")
SEP = "\n\n"
_SHARED_BASE = 1_000_000  # demonstration indices live far from query indices (0 .. n-1)
_SHARED_SET_STRIDE = 100_000
_PER_QUERY_BASE = 10_000_000
_PER_QUERY_SET_STRIDE = 100_000_000
_PER_QUERY_SPILL = 5_000_000  # within a variant's slot: replacements for skipped items
#: the most demonstration sets a cell may draw (their index ranges stay disjoint)
MAX_DEMO_SETS = 32


@dataclass(frozen=True)
class Prompt:
    """One prompt and where it came from; ``prefix`` is the part shared with other prompts."""

    text: str
    prefix: str
    query: Example
    shots: int  # requested
    demos: tuple[Example, ...]  # actually used (``len(demos) < shots`` when truncated)
    demo_set: int = 0

    @property
    def shots_used(self) -> int:
        return len(self.demos)


def render_prompt(
    task: Task, query: Example, demos: Sequence[Example], chat: ChatFormat | None = None
) -> tuple[str, str]:
    """``(prefix, full_text)``: the prefix is the instruction and the demonstrations."""
    if chat is not None:
        return chat.render(task, query, demos)
    parts = [task.instruction, *(task.render_demo(d) for d in demos)]
    prefix = SEP.join(parts) + SEP
    return prefix, prefix + task.render_query(query)


class ChatFormat:
    """Renders prompts through a tokenizer's chat template (see the module docstring)."""

    #: stands for the query's question while rendering, to find where the prefix ends
    _SENTINEL = "\u241eICLFT-QUERY\u241e"

    def __init__(self, tokenizer, mode: str, model: str = "the model"):
        if mode not in CHAT_MODES or mode == "none":
            raise UnknownNameError("chat template mode", mode, CHAT_MODES[1:])
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"--chat-template {mode} needs a tokenizer with a chat template, and {model}'s "
                "has none (use --chat-template none for a base model)"
            )
        self.tok, self.mode = tokenizer, mode
        bos = getattr(tokenizer, "bos_token", None)
        adds = bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [
            tokenizer.bos_token_id
        ]
        self._strip = bos if adds else None

    def messages(self, task: Task, question: str, demos: Sequence[Example]) -> list[dict]:
        if self.mode == "single":
            parts = [task.instruction, *(task.render_demo(d) for d in demos), question]
            return [{"role": "user", "content": SEP.join(parts)}]
        out: list[dict] = []
        lead = task.instruction + SEP
        for d in demos:
            out.append({"role": "user", "content": lead + d.question})
            out.append({"role": "assistant", "content": f"{task.answer_lead} {d.target}"})
            lead = ""
        out.append({"role": "user", "content": lead + question})
        return out

    def render(self, task: Task, query: Example, demos: Sequence[Example]) -> tuple[str, str]:
        msgs = self.messages(task, self._SENTINEL, demos)
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if self._strip and text.startswith(self._strip):
            text = text[len(self._strip) :]
        if text.count(self._SENTINEL) != 1:
            raise UserError("the tokenizer's chat template does not show the user's message once")
        prefix, rest = text.split(self._SENTINEL)
        return prefix, prefix + query.question + rest + task.answer_lead


class DemoPool:
    """Where demonstrations come from, for one task and seed; ``avoid``: questions no
    demonstration may have (the scored ones), each replaced by the next item."""

    def __init__(
        self,
        task: Task,
        seed: int,
        mode: str,
        max_shots: int,
        demo_set: int = 0,
        avoid: Collection[str] = frozenset(),
    ):
        if mode not in DEMO_MODES:
            raise UnknownNameError("demonstration mode", mode, DEMO_MODES)
        if not 0 <= demo_set < MAX_DEMO_SETS:
            raise ValueError(f"demo_set must be in 0..{MAX_DEMO_SETS - 1}, got {demo_set}")
        self.task, self.seed, self.mode, self.demo_set = task, seed, mode, demo_set
        self.stride = max(max_shots, 1) + 4  # spare items replace ones equal to a query
        self.avoid = frozenset(avoid)
        self._shared: list[Example] | None = None

    def _shared_list(self) -> list[Example]:
        if self._shared is None:
            base = _SHARED_BASE + self.demo_set * _SHARED_SET_STRIDE
            self._shared = draw(self.task, "clean", self.seed, base, self.stride, self.avoid)
        return self._shared

    def _per_query_list(self, slot: int, query_index: int) -> list[Example]:
        """The block of ``stride`` items of one query, skipped items replaced from the spill."""
        base = _PER_QUERY_BASE * (1 + slot) + self.demo_set * _PER_QUERY_SET_STRIDE
        start = base + query_index * self.stride
        block = [self.task.make_example("clean", self.seed, start + j) for j in range(self.stride)]
        kept = [d for d in block if d.question not in self.avoid]
        if len(kept) < self.stride:
            spill = base + _PER_QUERY_SPILL + query_index * self.stride
            kept += draw(self.task, "clean", self.seed, spill, self.stride - len(kept), self.avoid)
        return kept

    def candidates(self, query: Example, query_index: int, heldout: bool = False) -> list[Example]:
        """The ordered demonstration list for this query (before choosing k); ``heldout``
        queries (numbered from 0 too) draw per-query demonstrations from their own range."""
        if self.mode == "shared":
            pool = self._shared_list()
        else:
            v = (
                len(VARIANTS)
                if heldout or query.variant not in VARIANTS
                else VARIANTS.index(query.variant)
            )
            pool = self._per_query_list(v, query_index)
        return [d for d in pool if d.question != query.question]

    def demos(
        self, query: Example, query_index: int, k: int, heldout: bool = False
    ) -> list[Example]:
        return self.candidates(query, query_index, heldout)[:k]


def build_prompt(
    task: Task,
    query: Example,
    demos: Sequence[Example],
    shots: int,
    demo_set: int = 0,
    chat: ChatFormat | None = None,
) -> Prompt:
    prefix, text = render_prompt(task, query, demos, chat)
    return Prompt(
        text=text, prefix=prefix, query=query, shots=shots, demos=tuple(demos), demo_set=demo_set
    )
