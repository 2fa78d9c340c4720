"""The accelerate configs that ship are ones clo's trainer runs; FSDP means FSDP2."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from clo.train.distributed import resolve_sharding

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def _acc(kind, plugin=None):
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))


def test_shipped_configs_parse_and_none_is_deepspeed():
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type for p in sorted(CONFIGS.glob("*.yaml"))}
    assert kinds == {"cpu_gloo": DistributedType.MULTI_CPU, "ddp": DistributedType.MULTI_GPU,
                     "fsdp": DistributedType.FSDP}
    assert load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config["fsdp_version"] == 2


def test_sharding_follows_the_launcher():
    assert resolve_sharding("auto", _acc(DistributedType.MULTI_GPU)) == "none"
    assert resolve_sharding("auto", _acc(DistributedType.NO)) == "none"
    assert resolve_sharding("fsdp2", _acc(DistributedType.MULTI_CPU)) == "fsdp2"
    assert resolve_sharding("auto", _acc(DistributedType.FSDP, FullyShardedDataParallelPlugin(fsdp_version=2))) == "fsdp2"
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        resolve_sharding("auto", _acc(DistributedType.FSDP, FullyShardedDataParallelPlugin(fsdp_version=1)))
    with pytest.raises(ValueError, match="FSDP2 is the sharded path"):
        resolve_sharding("auto", _acc(DistributedType.DEEPSPEED))
