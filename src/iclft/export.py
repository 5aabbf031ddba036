"""Export iclft's evaluation cells as an lm-evaluation-harness task package.

``iclft export lm-eval`` writes, for every (task, variant, shots, demonstration set) cell that
``iclft eval`` with the same options would evaluate, one lm-eval task (``<name>.yaml``) over one
data file (``<name>.jsonl``), plus ``utils.py`` (the scoring) and ``README.md`` (the command).
``lm_eval --include_path DIR --tasks iclft`` then runs them with:

* the same prompts: each document carries the exact prompt iclft builds (instruction,
  demonstrations, query, answer lead), and the lm-eval task has ``num_fewshot: 0`` and no
  description, so lm-eval's context is that text unchanged (demonstrations are per item, which
  lm-eval's own few-shot sampler cannot reproduce);
* the same request types: ``loglik`` cells are ``multiple_choice`` (the total log-probability of
  ``" " + choice`` after the prompt; ``acc`` is the argmax, as iclft's), ``generate`` cells are
  ``generate_until`` with greedy decoding, the same token budget, and no stop string (lm-eval
  counts a lone leading space token against the paper protocol's budget, iclft does not);
* the same scoring: ``utils.process_results`` keeps the continuation up to the first newline
  after its answer began (iclft's stop rule, applied after generation because lm-eval's
  ``until`` would also stop on a newline *before* the answer) and judges it with iclft's own
  generate scorer (:mod:`iclft.icl.scoring`): the task's parse equals the target (``exact``), or
  ``str(target)`` occurs in the whole continuation or its parse equals the target (``paper``,
  iclft's lenient judge, never below exact match). ``utils.py`` is plain Python
  (the stop rule, parse and judge restated, held equal to iclft's by the tests), so lm-eval's
  environment needs no iclft.

The output directory is new, empty or an earlier export (replaced whole, so no stale task keeps
the ``iclft`` tag); another's is refused unless ``force`` (:func:`iclft.store.claim_output_dir`).

Unlike ``iclft eval``, no model is known here, so prompts are never shortened to fit a context.
"""

from __future__ import annotations

import json
from pathlib import Path

from iclft.errors import UserError
from iclft.icl.evaluate import demo_pools, demo_sets_for, new_tokens, scoring_for
from iclft.icl.prompts import build_prompt
from iclft.icl.scoring import PROTOCOLS
from iclft.icl.settings import EvalSpec
from iclft.store import (
    claim_output_dir,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from iclft.tasks import get_task

GROUP = "iclft"

#: the package's scoring, plain Python (lm-eval's environment needs no iclft): iclft's stop
#: rule (:func:`iclft.icl.decode.finished`), its parse (:meth:`iclft.tasks.base.Task.parse`)
#: and its judges (:mod:`iclft.icl.scoring`), restated; tests hold them equal to iclft's own
_UTILS = '''"""Scoring of iclft tasks in lm-evaluation-harness (written by `iclft export lm-eval`).

Plain Python: lm-eval's environment needs no iclft. Each document carries what its judgement
needs: the protocol, the target and, for a choice task, the choices.
"""

import re


def until_answer_line(text):
    """The continuation up to the newline that ends the answer: leading whitespace and newlines
    are skipped, then the next newline ends it (iclft's stop rule)."""
    start = len(text) - len(text.lstrip())
    end = text.find("\\n", start)
    return text if end < 0 else text[: end + 1]


def parse(text, choices=None):
    """The answer read from a continuation (None: nothing answer-like): a choice task's first
    word matched to a choice regardless of case, else the first integer."""
    text = text.strip()
    if choices is not None:
        m = re.match(r"[A-Za-z]+", text)
        word = m.group(0).lower() if m else None
        return next((c for c in choices if c.lower() == word), None)
    m = re.match(r"[-+]?\\d+", text)
    return str(int(m.group(0))) if m else None


def process_results(doc, results):
    """exact: the answer parsed from the continuation, cut at the stop rule, equals the target;
    paper: the target occurs anywhere in the whole budgeted continuation, or the answer
    parsed from it equals the target (so this is never below exact match: `True` is read in
    any case, `-05` as -5)."""
    output = results[0]
    if doc["protocol"] == "paper":
        correct = doc["target"] in output or parse(output, doc.get("choices")) == doc["target"]
    else:
        correct = parse(until_answer_line(output), doc.get("choices")) == doc["target"]
    return {"exact_match": float(correct)}
'''


def task_name(task: str, variant: str, shots: int, demo_set: int, demo_sets: int) -> str:
    suffix = f"_set{demo_set}" if demo_sets > 1 else ""
    return f"{GROUP}_{task}_{variant}_{shots}shot{suffix}"


def _yaml(name: str, data: Path, scoring: str, max_new_tokens: int) -> str:
    """One lm-eval task config (plain YAML; ``!function`` is lm-eval's tag for a function)."""
    lines = [
        f"task: {name}",
        f"tag: [{GROUP}]",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data.resolve()))}",
        "test_split: test",
        "num_fewshot: 0",
        'doc_to_text: "{{prompt}}"',
    ]
    if scoring == "loglik":
        lines += [
            "output_type: multiple_choice",
            "doc_to_choice: choices",
            "doc_to_target: target_index",
            'target_delimiter: " "',
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    else:
        lines += [
            "output_type: generate_until",
            'doc_to_target: "{{target}}"',
            "generation_kwargs:",
            "  until: []",
            f"  max_gen_toks: {max_new_tokens}",
            "  do_sample: false",
            "process_results: !function utils.process_results",
            "metric_list:",
            "  - metric: exact_match",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    return "\n".join(lines) + "\n"


def export_lm_eval(spec: EvalSpec, out_dir: Path, *, force: bool = False) -> list[str]:
    """Write the task package for ``spec`` into ``out_dir``; return the lm-eval task names."""
    if spec.chat_template != "none":
        raise UserError(
            "export writes plain prompts; lm-eval applies chat templates itself "
            "(--apply_chat_template), so export with --chat-template none"
        )
    claim = claim_output_dir(Path(out_dir), "export lm-eval", force=force)
    if claim.state == "own":  # an earlier export: replaced whole
        claim.clear()
    out_dir = claim.path
    names: list[str] = []
    for tname in spec.tasks:
        task = get_task(tname)
        scoring = scoring_for(task, spec.scoring, spec.protocol)
        queries = {v: task.generate(v, spec.n, spec.seed) for v in spec.variants}
        pools = demo_pools(task, spec)
        for k in spec.shots:
            for s in demo_sets_for(spec, k):
                for v in spec.variants:
                    name = task_name(tname, v, k, s, spec.demo_sets)
                    docs = []
                    for i, q in enumerate(queries[v]):
                        p = build_prompt(task, q, pools[s].demos(q, i, k), k, pools[s].demo_set)
                        doc = {
                            "id": q.id, "task": tname, "variant": v, "shots": k,
                            "demo_set": s, "protocol": spec.protocol, "prompt": p.text,
                            "target": q.target,
                        }  # fmt: skip
                        if task.choices is not None:  # generate: what utils.parse matches
                            doc["choices"] = list(task.choices)
                        if scoring == "loglik":
                            doc["target_index"] = doc["choices"].index(q.target)
                        docs.append(doc)
                    data = out_dir / f"{name}.jsonl"
                    write_jsonl_atomic(data, docs)
                    config = _yaml(name, data, scoring, new_tokens(task, spec))
                    write_text_atomic(out_dir / f"{name}.yaml", config)
                    names.append(name)
    write_text_atomic(out_dir / "utils.py", _UTILS)
    write_json_atomic(
        out_dir / "iclft_export.json",
        {"spec": {**spec.__dict__}, "protocol_stop": PROTOCOLS[spec.protocol][0], "tasks": names},
    )
    write_text_atomic(
        out_dir / "README.md",
        "# iclft tasks for lm-evaluation-harness\n\n"
        f"    lm_eval --model hf --model_args pretrained=MODEL --include_path {out_dir} "
        f"--tasks {GROUP} --log_samples --output_path OUT\n\n"
        "Written by `iclft export lm-eval`; self-contained (lm-eval's environment needs no "
        'iclft). See iclft\'s documentation, "Using iclft with lm-evaluation-harness".\n',
    )
    return names
