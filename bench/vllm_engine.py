"""Building a vLLM engine with (or without) the pbkv connector, the same way everywhere:
replay, benchmarks and tests.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so an in-process
link can reach it; ``VLLM_CPU_OMP_THREADS_BIND`` defaults to ``0-1`` (the machine's 2 cores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkv.engine_adapter.vllm.connector import ConnectorConfig, kv_transfer_config


@dataclass(frozen=True, slots=True)
class LlmConfig:
    model_dir: str
    block_size: int = 128
    kv_cache_memory_bytes: int = 64 * 2**20
    max_model_len: int = 8192
    max_num_seqs: int = 8
    seed: int = 0
    dtype: str = "auto"  # "auto": the checkpoint's dtype (make-tiny writes it)
    connector: ConnectorConfig | None = None  # None: stock vLLM, no connector at all
    # Publish KV events on this ZMQ address (stock vLLM's --kv-events-config; shadow mode)
    kv_events_endpoint: str | None = None
    kv_events_replay_endpoint: str | None = None

    def __post_init__(self) -> None:
        if not (Path(self.model_dir) / "config.json").is_file():
            raise ValueError(
                f"model_dir {self.model_dir!r} has no config.json "
                f"(make one with `pbkv model make-tiny --out DIR`)"
            )
        if self.block_size <= 0 or self.kv_cache_memory_bytes <= 0:
            raise ValueError("block_size and kv_cache_memory_bytes must be positive")


def set_engine_env() -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def build_llm(config: LlmConfig) -> Any:
    """A ``vllm.LLM`` serving ``config.model_dir`` with prompts given as token ids."""
    set_engine_env()
    from vllm import LLM
    from vllm.config import KVTransferConfig

    from pbkv.engine_adapter.vllm.selftest import check_version

    check_version()
    kwargs: dict[str, Any] = {}
    if config.connector is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(**kv_transfer_config(config.connector))
    if config.kv_events_endpoint is not None:
        from vllm.config import KVEventsConfig

        kwargs["kv_events_config"] = KVEventsConfig(
            enable_kv_cache_events=True,
            publisher="zmq",
            endpoint=config.kv_events_endpoint,
            replay_endpoint=config.kv_events_replay_endpoint,
        )
    return LLM(
        model=config.model_dir,
        skip_tokenizer_init=True,
        enforce_eager=True,
        block_size=config.block_size,
        kv_cache_memory_bytes=config.kv_cache_memory_bytes,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        enable_prefix_caching=True,
        seed=config.seed,
        dtype=config.dtype,
        **kwargs,
    )


def connector_of(llm: Any) -> Any | None:
    """The scheduler-side pbkv connector of an in-process engine (``None`` without one)."""
    core = llm.llm_engine.engine_core.engine_core
    return getattr(core.scheduler, "connector", None)


def worker_connector_of(llm: Any) -> Any | None:
    """The worker-side pbkv connector when the worker runs in this process (the CPU backend's
    in-process executor), else ``None``."""
    from vllm.distributed.kv_transfer.kv_transfer_state import (
        get_kv_transfer_group,
        has_kv_transfer_group,
    )

    if connector_of(llm) is None or not has_kv_transfer_group():
        return None
    group = get_kv_transfer_group()
    return group if hasattr(group, "store") else None


def block_pool_of(llm: Any) -> Any:
    core = llm.llm_engine.engine_core.engine_core
    return core.scheduler.kv_cache_manager.block_pool
