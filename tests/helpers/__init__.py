"""Test helpers: raw safetensors writing (any header, hostile included) and synthetic
checkpoints in exact ModelOpt layout for every format, to be broken on purpose by tests."""
