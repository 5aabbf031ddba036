"""``iclft finetune``: full, LoRA, K/V-only or layer-causal fine-tuning on the tasks."""

from __future__ import annotations

from pathlib import Path

import typer


def finetune_command(
    output: Path = typer.Option(..., "-o", "--output", help="Output directory of the run."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file of settings."),
    model: str = typer.Option(None, "--model", "-m", help="Alias, directory or hub id."),
    method: str = typer.Option(None, "--method", help="full, lora, kv or layer-causal."),
    params: str = typer.Option(None, "--params", help="layer-causal: full, kv (default), lora."),
    tasks: str = typer.Option(None, "--tasks", "-t", help="Training tasks, comma-separated."),
    data: str = typer.Option(None, "--data", help="tasks (default) or demonstrations."),
    train_n: int = typer.Option(None, "--train-n", help="Training texts per task."),
    train_variant: str = typer.Option(None, "--train-variant", help="clean or misleading."),
    shots: int = typer.Option(None, "--shots", help="demonstrations mode: k."),
    loss_on: str = typer.Option(None, "--loss-on", help="target (default) or full."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps."),
    epochs: float = typer.Option(None, "--epochs", help="Epochs (instead of --steps)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate."),
    schedule: str = typer.Option(None, "--schedule", help="constant[_with_warmup], linear..."),
    warmup_steps: int = typer.Option(None, "--warmup-steps"),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Per-device batch size."),
    grad_accum: int = typer.Option(None, "--grad-accum", help="Gradient accumulation steps."),
    weight_decay: float = typer.Option(None, "--weight-decay"),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw or sgd."),
    precision: str = typer.Option(None, "--precision", help="fp32, bf16 or fp16."),
    seed: int = typer.Option(None, "--seed", "-s"),
    eval_every: int = typer.Option(None, "--eval-every", help="Steps between curve points."),
    eval_n: int = typer.Option(None, "--eval-n", help="Held-out items per task and variant."),
    eval_tasks: str = typer.Option(None, "--eval-tasks", help="Curve tasks (default: --tasks)."),
    save_every: int = typer.Option(None, "--save-every", help="Steps between checkpoints."),
    eval_checkpoints: str = typer.Option(
        None,
        "--eval-checkpoints",
        help="Steps whose checkpoints are always saved for 0-shot evaluation, comma-separated "
        "(e.g. 100,300; the paper evaluates step 100 of 300); '' for none.",
    ),
    max_length: int = typer.Option(None, "--max-length"),
    lora_rank: int = typer.Option(None, "--lora-rank"),
    lora_alpha: float = typer.Option(None, "--lora-alpha"),
    lora_dropout: float = typer.Option(None, "--lora-dropout"),
    lora_targets: str = typer.Option(None, "--lora-targets", help="Module names, comma-sep."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
) -> None:
    """Fine-tune a model on task data and write the final model, curves.csv and manifest.json;
    the output directory is a model that `iclft eval --model DIR` accepts, and so is each
    complete checkpoint (`DIR/checkpoints/checkpoint-N`)."""
    from rich.console import Console

    from iclft.finetune import make_config, run_finetune
    from iclft.finetune.config import load_config_file
    from iclft.icl.evaluate import parse_int_list

    values = load_config_file(config) if config else {}
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    ckpts = None
    if eval_checkpoints is not None:  # '' clears a list the config file gives
        text = eval_checkpoints.strip()
        ckpts = list(parse_int_list(text, "--eval-checkpoints")) if text else []
    given = {
        "model": model,
        "method": method,
        "params": params,
        "tasks": split(tasks) if tasks else None,
        "data": data,
        "train_n": train_n,
        "train_variant": train_variant,
        "shots": shots,
        "loss_on": loss_on,
        "steps": steps,
        "epochs": epochs,
        "lr": lr,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "precision": precision,
        "seed": seed,
        "eval_every": eval_every,
        "eval_n": eval_n,
        "eval_tasks": split(eval_tasks) if eval_tasks else None,
        "save_every": save_every,
        "eval_checkpoints": ckpts,
        "max_length": max_length,
        "device": device,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    lora = dict(values.get("lora") or {})
    for key, v in (
        ("rank", lora_rank),
        ("alpha", lora_alpha),
        ("dropout", lora_dropout),
        ("target_modules", split(lora_targets) if lora_targets else None),
    ):
        if v is not None:
            lora[key] = v
    if lora:
        values["lora"] = lora
    if epochs is not None and steps is None:
        values["steps"] = None
    cfg = make_config(**values)
    res = run_finetune(cfg, output, resume=resume)
    Console(stderr=True).print(
        f"done: {res.steps} steps, final loss {res.final_loss:.4f}, "
        f"{res.trainable:,}/{res.total:,} parameters trained; model in {output}"
    )
