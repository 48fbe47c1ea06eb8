"""Whole models: ModelOpt checkpoints as ready transformers models (``motensor.from_pretrained``)."""
from motensor.models.bmm_experts import FusedGateUpQuantExperts
from motensor.models.moe import QuantExperts
from motensor.models.pretrained import (
    SUPPORTED_ARCHITECTURES,
    ModelReport,
    UnsupportedArchitectureError,
    from_pretrained,
    load_tokenizer,
)

__all__ = [
    "from_pretrained",
    "load_tokenizer",
    "QuantExperts",
    "FusedGateUpQuantExperts",
    "ModelReport",
    "SUPPORTED_ARCHITECTURES",
    "UnsupportedArchitectureError",
]
