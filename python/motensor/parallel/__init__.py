"""Beyond one device: tensor parallelism on ``torch.distributed`` (:mod:`motensor.parallel.tp`)
and ``device_map`` placement across devices and the CPU (:mod:`motensor.parallel.placement`)."""
from motensor.parallel.tp import ShardPlan, TPContext, holds_bytes, setup

__all__ = ["ShardPlan", "TPContext", "holds_bytes", "setup"]
