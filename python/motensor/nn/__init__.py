"""Quantized ``torch.nn`` modules for every ModelOpt format, and ``replace_linears``."""
from motensor.nn.base import QuantLinear
from motensor.nn.fuse import fuse_modules
from motensor.nn.replace import replace_linears

__all__ = ["QuantLinear", "replace_linears", "fuse_modules"]
