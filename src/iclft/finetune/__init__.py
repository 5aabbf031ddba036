"""Fine-tuning: training data from the tasks, the methods as strategies (full, LoRA, K/V,
layer-causal GD), one settings model, and the shared Trainer wiring with learning curves and
checkpoints. The settings and method names import without torch; the trainer loads on use."""

from iclft.finetune.config import FinetuneConfig, TrainingSettings, make_config
from iclft.finetune.methods import METHOD_NAMES, get_method

__all__ = [
    "METHOD_NAMES",
    "FinetuneConfig",
    "FinetuneResult",
    "TrainingSettings",
    "get_method",
    "make_config",
    "run_finetune",
]


def __getattr__(name: str):
    if name in ("FinetuneResult", "run_finetune"):
        from iclft.finetune import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
