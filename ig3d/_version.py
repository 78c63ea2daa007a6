"""ig3d's version, defined here only: the build reads it from this file (pyproject.toml's
``[tool.scikit-build.metadata.version]``) and ``ig3d.__version__`` imports it."""

from __future__ import annotations

__version__ = "0.1.0"
