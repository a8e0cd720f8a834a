"""amsim's version, read from the installed package's metadata (pyproject.toml is the one place it is written)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("amsim")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
