"""``python -m ig3d``: the same command line as ``ig3d`` (for environments whose scripts folder is not
on PATH)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
