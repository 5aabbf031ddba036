"""``iclft finetune``: full, LoRA, K/V-only or layer-causal fine-tuning on the tasks.

Its options are derived from :class:`~iclft.finetune.config.FinetuneConfig`'s fields (one
``--field-name`` per field, its help and default from the field); a list is given
comma-separated. Given options override the ``--config`` YAML file, which overrides the defaults.
"""

from __future__ import annotations

from pathlib import Path

import typer

from iclft.cli.eval import FORCE
from iclft.cli.fields import field_kind, with_field_options
from iclft.finetune.config import LORA_KEYS, FinetuneConfig

#: the options that also have a short form
FLAGS = {
    "model": ["--model", "-m"],
    "tasks": ["--tasks", "-t"],
    "batch_size": ["--batch-size", "-b"],
    "seed": ["--seed", "-s"],
}


def _values(given: dict) -> dict:
    """The settings the options give: lists split at commas, LoRA fields nested as a run's
    file nests them."""
    from iclft.icl.evaluate import parse_int_list

    values: dict = {}
    for name, v in given.items():
        if v is None:
            continue
        if field_kind(FinetuneConfig.model_fields[name].annotation)[1]:
            text = v.strip()
            flag = f"--{name.replace('_', '-')}"
            if name == "eval_checkpoints":
                v = list(parse_int_list(text, flag)) if text else []
            else:
                v = [x.strip() for x in text.split(",") if x.strip()]
                if not v:
                    continue  # '' gives nothing: the file's or the default list stays
        if name in LORA_KEYS:
            values.setdefault("lora", {})[LORA_KEYS[name]] = v
        else:
            values[name] = v
    return values


def finetune_command(
    output: Path = typer.Option(..., "-o", "--output", help="Output directory of the run."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file of settings."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    force: bool = FORCE,
    **settings,
) -> None:
    """Fine-tune a model on task data and write the final model, curves.csv and manifest.json;
    the output directory is a model that `iclft eval --model DIR` accepts, and so is each
    complete checkpoint (`DIR/checkpoints/checkpoint-N`)."""
    from rich.console import Console

    from iclft.finetune import make_config, run_finetune
    from iclft.finetune.config import load_config_file

    values = load_config_file(config) if config else {}
    given = _values(settings)
    lora = {**(values.get("lora") or {}), **given.pop("lora", {})}
    values.update(given)
    if lora:
        values["lora"] = lora
    if settings.get("epochs") is not None and settings.get("steps") is None:
        values["steps"] = None  # --epochs instead of the default (or the file's) steps
    cfg = make_config(**values)
    res = run_finetune(cfg, output, resume=resume, force=force)
    from iclft.distributed import is_main

    if not is_main():  # under accelerate launch, rank 0 reports
        return
    Console(stderr=True).print(
        f"done: {res.steps} steps, final loss {res.final_loss:.4f}, "
        f"{res.trainable:,}/{res.total:,} parameters trained; model in {output}"
    )


with_field_options(finetune_command, FinetuneConfig, FLAGS)
