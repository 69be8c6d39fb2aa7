"""TLS, model hot reload by file watch and by SIGHUP, graceful SIGTERM, export-traces."""

from __future__ import annotations

import datetime
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_process import PbkvServe

from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.trace import Segment, Step, Workflow
from pbkv.training.trace_io import load_workflows

# The installed console script (``python -m pbkv.cli`` would load pbkv.cli twice).
PBKV = [str(Path(sys.executable).with_name("pbkv"))]
TRAIN = [
    Workflow(
        f"t{i}",
        "app",
        tuple(Step(a, (Segment(f"system:{a}", 32),), 8) for a in ["plan", "code", "test"]),
    )
    for i in range(3)
]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_with_a_bearer_token(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    cfg = ServiceConfig(
        host="localhost",
        port=0,
        http_port=None,
        watch_model_s=None,
        store_path=tmp_path / "s.sqlite3",
        tls_cert_file=cert,
        tls_key_file=key,
        auth_token="t0ken",
    )
    with ServerThread(cfg) as srv:
        target = f"localhost:{srv.port}"
        with PbkvClient(target, tls_ca_file=cert, token="t0ken") as client:
            assert client.start_workflow("w1", "app") == 1
        # A plaintext client cannot talk to the TLS port.
        with (
            PbkvClient(target, token="t0ken", timeout_s=2) as plain,
            pytest.raises(PbkvError) as info,
        ):
            plain.start_workflow("w2", "app")
        assert info.value.code.name == "UNAVAILABLE"


def test_a_new_model_version_is_picked_up_by_the_file_watch(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), model, {"version": "v1"})
    cfg = ServiceConfig(
        port=0,
        http_port=None,
        store_path=tmp_path / "s.sqlite3",
        model_path=model,
        watch_model_s=0.05,
    )
    with ServerThread(cfg) as srv, PbkvClient(srv.target) as client:
        assert client.stats()["service"]["model_version"] == "v1"
        save_model(PREDICTORS.create("frequency", workflows=TRAIN), model, {"version": "v2"})
        deadline = time.monotonic() + 10
        while client.stats()["service"]["model_version"] != "v2":
            assert time.monotonic() < deadline, "the watcher never reloaded the model"
            time.sleep(0.05)
        assert client.stats()["service"]["model_reloads"] == 1


@pytest.mark.slow
def test_sighup_reloads_and_sigterm_drains_pbkv_serve(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), model, {"version": "v1"})
    pbkv = PbkvServe(tmp_path, "--model", str(model), "--watch-model-s", "0")
    try:
        with PbkvClient(pbkv.target) as client:
            client.start_workflow("w1", "app")
            save_model(PREDICTORS.create("frequency", workflows=TRAIN), model, {"version": "v2"})
            os.kill(pbkv.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while client.stats()["service"]["model_version"] != "v2":
                assert time.monotonic() < deadline, "SIGHUP did not reload the model"
                time.sleep(0.05)
            assert [w.workflow_id for w in client.list_workflows()] == ["w1"]
        os.kill(pbkv.pid, signal.SIGTERM)
        code, output = pbkv.exit_output(30)
        assert code == 0
        assert "shutting down" in output
    finally:
        pbkv.kill()


def test_export_traces_writes_finished_workflows_as_trace_v1(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite3"
    cfg = ServiceConfig(port=0, http_port=None, store_path=store, watch_model_s=None)
    with ServerThread(cfg) as srv, PbkvClient(srv.target) as client:
        client.start_workflow("done", "app", task="ship it")
        for i, agent in enumerate(["plan", "code"]):
            client.step_started("done", agent)
            client.step_finished(
                "done",
                agent,
                step_index=i,
                output_text=f"o{i}",
                output_tokens=5,
                context_text="ctx",
                input_tokens=12,
                prompt=[(f"system:{agent}", 10), ("new", 2)] if i else [],
            )
        client.end_workflow("done")
        client.start_workflow("running", "app")
    out = tmp_path / "live.jsonl.gz"
    run = subprocess.run(
        [*PBKV, "export-traces", "--store-path", str(store), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "1 finished workflows" in run.stdout
    [wf] = load_workflows(out)  # the strict trace reader accepts it
    assert (wf.workflow_id, wf.app, wf.task, wf.agents) == (
        "done",
        "app",
        "ship it",
        ("plan", "code"),
    )
    assert wf.steps[0].prompt == (Segment("new", 12),)  # no segments given: input_tokens
    assert wf.steps[1].prompt == (Segment("system:code", 10), Segment("new", 2))
    assert [s.output_text for s in wf.steps] == ["o0", "o1"]
    assert json.loads(gzip.decompress(out.read_bytes()))["format"] == "pbkv.trace.v1"
    missing = subprocess.run(
        [*PBKV, "export-traces", "--store-path", str(tmp_path / "nope.sqlite3"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "--store-path" in missing.stderr
