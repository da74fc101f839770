"""Facts about the distributed setup that several training steps need."""

from __future__ import annotations


def is_sharded(accelerator) -> bool:
    """True under FSDP or DeepSpeed ZeRO-3: each rank holds only a shard of the weights."""
    from accelerate.utils import DistributedType
    return accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3)
