"""Command line: ``ig3d info`` (build and hardware facts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, kernels

    facts = {"version": __version__, **kernels.info()}
    print(json.dumps(facts, indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ig3d", description="ig3d: facial-expression inference (Ig3D)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print build and hardware facts as JSON")
    p_info.set_defaults(func=_cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
