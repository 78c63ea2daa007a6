"""The Ig3D method as commands: ``ig3d extract``, ``ig3d train``, ``ig3d fit-fusion``, ``ig3d evaluate``."""

from __future__ import annotations

import argparse


def add_parsers(sub: "argparse._SubParsersAction") -> None:
    """Add the workflow subcommands to the ``ig3d`` parser."""
