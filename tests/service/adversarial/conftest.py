"""The served fixture of the adversarial suite (helpers: adversarial_support.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from adversarial_support import ACKED_TENANT, Served, start_serve

from pbkv.service.client import PbkvClient


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("adversarial")
    (tmp / "control").mkdir()
    procs = []
    try:
        proc, target, log_path = start_serve(tmp, "--engine-grace-s", "0.05", "--otlp")
        procs.append(proc)
        control, control_target, _ = start_serve(tmp / "control")
        procs.append(control)
        time.sleep(0.5)
        srv = Served(
            target,
            control_target,
            proc,
            log_path,
            psutil.Process(proc.pid).memory_info().rss / 2**20,
        )
        with PbkvClient(target, tenant=ACKED_TENANT, timeout_s=10) as client:
            for i in range(5):  # acknowledged before the attacks: must all survive them
                wid = f"acked-{i}"
                client.start_workflow(wid, "app")
                for s in range(3):
                    client.step_started(wid, "agent")
                    client.step_finished(wid, "agent", step_index=s, output_text="ok")
                srv.acked[wid] = 3
        yield srv
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
