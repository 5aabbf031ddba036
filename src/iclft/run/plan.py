"""The plan of a run: its stages, in the order they run (per model and seed: the baseline and
ICL sweep; each fine-tuning method, then the 0-shot evaluation of its model; then the analysis
stages, one per task). A stage's ``key`` names its files in the run directory
(``stages/<key>.json``, ``predictions/<key>.jsonl``)."""

from __future__ import annotations

from dataclasses import dataclass

from iclft.run.config import ExperimentConfig


@dataclass(frozen=True)
class Stage:
    key: str
    kind: str  # a key of STAGES: icl | finetune | ft-eval | circuits | similarity
    model: str
    seed: int
    method: str | None = None
    task: str | None = None

    @property
    def label(self) -> str:
        parts = [self.kind, self.model, f"seed {self.seed}", self.method or "", self.task or ""]
        return " · ".join(p for p in parts if p)


def plan(cfg: ExperimentConfig) -> list[Stage]:
    """Every stage of the grid, in the order it runs."""
    stages: list[Stage] = []
    for mi, model in enumerate(cfg.models):
        for seed in cfg.seeds:
            tag = f"m{mi}-s{seed}"
            if "baseline" in cfg.methods or "icl" in cfg.methods:
                stages.append(Stage(f"{tag}-icl", "icl", model, seed))
            for m in cfg.ft_methods():
                stages.append(Stage(f"{tag}-{m}-train", "finetune", model, seed, m))
                stages.append(Stage(f"{tag}-{m}-eval", "ft-eval", model, seed, m))
        if cfg.analysis.circuits.enabled:
            from iclft.analysis.pairs import pair_tasks

            tasks = cfg.analysis.circuits.tasks or [t for t in cfg.tasks if t in pair_tasks()]
            for t in tasks:
                stages.append(
                    Stage(f"m{mi}-circuits-{t}", "circuits", model, cfg.seeds[0], None, t)
                )
        if cfg.analysis.similarity.enabled:
            for t in cfg.analysis.similarity.tasks or cfg.tasks:
                stages.append(
                    Stage(f"m{mi}-similarity-{t}", "similarity", model, cfg.seeds[0], None, t)
                )
    return stages
