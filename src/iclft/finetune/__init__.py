"""Fine-tuning: training data from the tasks, parameter-selection methods (full, LoRA, K/V),
layer-causal GD, and the shared Trainer wiring with learning curves and checkpoints."""

from iclft.finetune.config import METHODS, FinetuneConfig, make_config
from iclft.finetune.train import FinetuneResult, run_finetune

__all__ = ["METHODS", "FinetuneConfig", "FinetuneResult", "make_config", "run_finetune"]
