"""The ``motensor`` command line."""
from __future__ import annotations

import argparse
import logging
import sys


def _inspect(args: argparse.Namespace) -> int:
    import motensor

    ckpt = motensor.open(args.path)
    print(ckpt.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="motensor", description="NVIDIA ModelOpt checkpoints in plain PyTorch.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what motensor does (INFO level)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="print the modules, formats and sizes of a checkpoint")
    s.add_argument("path", help="checkpoint directory or .safetensors file")
    s.set_defaults(func=_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from motensor.errors import MotensorError

    try:
        return args.func(args)
    except MotensorError as e:
        print(f"motensor: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
