"""The accelerate config files under configs/accelerate/ are ones accelerate reads."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "accelerate").glob("*.yaml"))


def test_the_cases_users_meet_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"one-node-ddp", "fsdp-full-finetune", "multi-node", "cpu-2-processes"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_loads_each_config(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type in (DistributedType.MULTI_GPU, DistributedType.FSDP)
    assert cfg.num_processes >= 2
    if cfg.distributed_type == DistributedType.FSDP:
        # the final model must be gathered whole on rank 0 to be saved as one safetensors file
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if cfg.num_machines > 1:
        assert cfg.main_process_port and cfg.main_process_ip
