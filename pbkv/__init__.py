"""pbkv: prediction-driven KV-cache management for LLM multi-agent workflows."""

from importlib import metadata as _metadata

try:  # the one place the version is written is pyproject.toml
    __version__ = _metadata.version("pbkv")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
