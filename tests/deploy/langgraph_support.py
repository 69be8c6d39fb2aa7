"""Real servers for the orchestrator-integration tests, on the shared launchers:
``pbkv serve`` (``serve_process.PbkvServe``) and vLLM's OpenAI server on a tiny chat model
(``vllm_serve_support.VllmServe``; stock, or with the pbkv connector attached), each in its
own process group and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from serve_process import PbkvServe
from vllm_serve_support import VllmServe, VllmServeConfig


def make_chat_model(out_dir: Path) -> Path:
    """A make-tiny model with its byte-level chat tokenizer (chat completions work)."""
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    return make_tiny(out_dir, TinyModelConfig(tokenizer=True))


@contextlib.contextmanager
def pbkv_serve(store_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``pbkv serve`` on a free port with its SQLite store at ``store_path`` (and ``extra``
    flags); yields (process, gRPC target)."""
    server = PbkvServe(store_path.parent, "--store-path", str(store_path), *extra)
    try:
        yield server.proc, server.target
    finally:
        server.stop()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a server started here (no shutdown: a crash)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@contextlib.contextmanager
def vllm_serve(
    model_dir: Path, port: int, log_path: Path, connector: object = None
) -> Iterator[str]:
    """vLLM's OpenAI server for ``model_dir`` (served as ``tiny``), stock or with the pbkv
    ``connector`` (a ``ConnectorConfig``); yields its base URL (``.../v1``)."""
    config = VllmServeConfig(
        str(model_dir),
        log_path=log_path,
        connector=connector,
        port=port,
        kv_cache_memory_bytes=64 * 2**20,
        max_model_len=2048,
        skip_tokenizer_init=False,
        extra_args=("--served-model-name", "tiny"),
    )
    with VllmServe(config) as server:
        yield server.url + "/v1"
