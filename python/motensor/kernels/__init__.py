"""GPU kernels of motensor (Triton, and CuPy raw CUDA). Shipped as ``motensor.kernels``."""
