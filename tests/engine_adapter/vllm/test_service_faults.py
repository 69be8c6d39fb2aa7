"""The adapter with the real pbkv service in the loop: the service is stopped mid-run (the
engine keeps serving, plain LRU) and restarted on the same port (the adapter reconnects and
re-announces its cache). The engine runs in a child process driven line by line over stdin, so
every phase is ordered by the test, not by sleeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

ENGINE = textwrap.dedent("""
    import json, sys
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from pbkv.engine_adapter.vllm.connector import ConnectorConfig
    from pbkv.bench.vllm_engine import LlmConfig, build_llm, connector_of

    def main(model, target):
        llm = build_llm(LlmConfig(model, kv_cache_memory_bytes=4 * 2**20, max_model_len=2048,
            connector=ConnectorConfig(engine_id="svc-e", link="service", service_target=target,
                                      host_tier_blocks=8)))
        conn = connector_of(llm)
        served = 0
        for line in sys.stdin:
            cmd, *arg = line.split()
            if cmd == "gen":
                for _ in range(int(arg[0])):
                    toks = [(i * 31 + served * 977) % 4000 + 16 for i in range(300)]
                    out = llm.generate([TokensPrompt(prompt_token_ids=toks)],
                                       SamplingParams(max_tokens=2, temperature=0.0,
                                                      ignore_eos=True), use_tqdm=False)
                    served += len(out[0].outputs[0].token_ids) == 2
            elif cmd == "wait":
                conn.link.client.wait_connected(float(arg[0]))
            elif cmd == "flush":
                conn.link.client.flush(10.0)
            elif cmd == "quit":
                break
            st = conn.link.client.stats()
            print("PBKV:" + json.dumps({"served": served, "connects": st.connects,
                                        "connected": st.connected,
                                        "gpu_blocks": len(conn.reporter.gpu_hashes())}), flush=True)

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
""")


class Engine:
    def __init__(self, script, model, target):
        env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0-1")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), model, target],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def do(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("PBKV:"):
                return json.loads(line[5:])
        raise AssertionError(f"engine process ended during {command!r}")

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait(30)


def start_service(tmp_path, port: int):
    from pbkv.cache_manager.manager import CacheManager, ManagerConfig
    from pbkv.service.config import ServiceConfig
    from pbkv.service.server_thread import ServerThread

    manager = CacheManager(ManagerConfig(policy="pbkv"))
    thread = ServerThread(
        ServiceConfig(port=port, http_port=None, store_path=tmp_path / f"traces-{port}.sqlite3"),
        manager,
    )
    server = thread.start()
    return thread, server.port, manager


def test_service_killed_and_restarted_mid_run(tmp_path, vllm_available):
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    model = str(make_tiny(tmp_path / "tiny", TinyModelConfig()))
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    service, port, manager = start_service(tmp_path, 0)
    engine = Engine(script, model, f"127.0.0.1:{port}")
    try:
        state = engine.do("wait 60")
        assert state["connected"] and state["connects"] == 1
        engine.do("gen 3")
        state = engine.do("flush")
        assert state["gpu_blocks"] == 6  # 3 prompts x 2 full blocks of 128 tokens
        stats = service.run(manager.stats)
        assert stats.gpu_blocks_cached == 6

        service.stop()  # the service dies mid-run ...
        state = engine.do("gen 3")  # ... and the engine keeps serving (plain LRU)
        assert state["served"] == 6 and not state["connected"]

        service, _, manager = start_service(tmp_path, port)  # restarted, empty
        engine.do("wait 60")
        engine.do("gen 1")  # the next scheduler step re-announces the cache
        state = engine.do("flush")
        assert state["connects"] == 2 and state["served"] == 7
        stats = service.run(manager.stats)
        assert stats.gpu_blocks_cached == state["gpu_blocks"] > 6
    finally:
        engine.close()
        service.stop()
