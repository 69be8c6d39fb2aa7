"""Corrupt model artifacts (issue 13, item 7) against a real server in process: ReloadModel
answers FAILED_PRECONDITION naming the file, the watcher logs a bad artifact once and waits
for the files to change, ``pbkv serve --model`` prints one clean error line. And ReloadModel
loads only from the configured model directory (item 4)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.trace import Segment, Step, Workflow

Code = grpc.StatusCode
PBKV = str(Path(sys.executable).with_name("pbkv"))
TRAIN = [
    Workflow(
        f"t{i}",
        "app",
        tuple(Step(a, (Segment(f"system:{a}", 32),), 8) for a in ["plan", "code", "test"]),
    )
    for i in range(3)
]
# file -> bytes written over it -> what the error says (tests/predictor/test_artifact.py
# covers every kind at the loader; these go through the service)
BROKEN = {
    "binary metadata": ("metadata.json", b"\x80\x81\xfe\xff", "not UTF-8 text (binary or corrupt)"),
    "metadata a list": ("metadata.json", b"[1, 2]", "must be a JSON object, got list"),
    "binary history": ("history.json", b"\xff\x00", "not UTF-8 text (binary or corrupt)"),
}


def config(tmp_path: Path, **kw) -> ServiceConfig:
    return ServiceConfig(
        **{
            "port": 0,
            "http_port": None,
            "watch_model_s": None,
            "store_path": tmp_path / "traces.sqlite3",
            **kw,
        }
    )


def model(path: Path, version: str, kind: str = "markov1", force: bool = False) -> Path:
    return save_model(
        PREDICTORS.create(kind, workflows=TRAIN), path, {"version": version}, force=force
    )


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_reload_of_a_corrupt_artifact_is_failed_precondition_naming_the_file(
    tmp_path, case
) -> None:
    root = model(tmp_path / "model", "v1")
    broken = model(root / "broken", "v2")
    name, data, what = BROKEN[case]
    (broken / name).write_bytes(data)
    with ServerThread(config(tmp_path, model_path=root)) as srv, PbkvClient(srv.target) as client:
        with pytest.raises(PbkvError) as info:
            client.reload_model(broken)
        assert info.value.code == Code.FAILED_PRECONDITION
        assert info.value.message == f"model_path: {broken / name}: {what}"
        assert client.stats()["service"]["model_version"] == "v1"


def test_markov_without_its_order_is_failed_precondition(tmp_path) -> None:
    root = model(tmp_path / "model", "v1")
    broken = model(root / "broken", "v2")
    meta = (broken / "metadata.json").read_text().replace('"order"', '"no_order"')
    (broken / "metadata.json").write_text(meta)
    with (
        ServerThread(config(tmp_path, model_path=root)) as srv,
        PbkvClient(srv.target) as client,
        pytest.raises(PbkvError) as info,
    ):
        client.reload_model(broken)
    assert info.value.code == Code.FAILED_PRECONDITION
    assert f"{broken / 'metadata.json'}: a markov1 model needs config.order" in info.value.message


def test_the_watcher_logs_a_bad_artifact_once_and_reloads_when_it_changes(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pbkv.service")
    root = model(tmp_path / "model", "v1")
    with (
        ServerThread(config(tmp_path, model_path=root, watch_model_s=0.02)) as srv,
        PbkvClient(srv.target) as client,
    ):
        (root / "metadata.json").write_bytes(b"\x80 not json")
        time.sleep(1.0)  # 50 polls
        failures = [r for r in caplog.records if "model reload" in r.getMessage()]
        assert len(failures) == 1 and "not UTF-8 text" in failures[0].getMessage()
        assert client.stats()["service"]["model_version"] == "v1"
        model(root, "v2", kind="frequency", force=True)
        deadline = time.monotonic() + 10
        while client.stats()["service"]["model_version"] != "v2":
            assert time.monotonic() < deadline, "the watcher never picked up the fixed model"
            time.sleep(0.05)


def test_pbkv_serve_prints_one_clean_line_for_a_corrupt_model(tmp_path) -> None:
    root = model(tmp_path / "model", "v1")
    (root / "metadata.json").write_text('["a list"]')
    run = subprocess.run(
        [
            PBKV,
            "serve",
            "--port",
            "0",
            "--no-dashboard",
            "--model",
            str(root),
            "--store-path",
            str(tmp_path / "s.sqlite3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PBKV_TRACEBACK": ""},
    )
    assert run.returncode == 2
    assert run.stderr == (
        f"pbkv: error: {root / 'metadata.json'}: must be a JSON object, got list\n"
    )


def test_reload_only_from_the_configured_directory_and_outside_paths_all_look_alike(
    tmp_path,
) -> None:
    root = model(tmp_path / "model", "v1")
    model(root / "v2", "v2")
    unreadable = tmp_path / "secret"
    unreadable.mkdir(mode=0)
    outside = [tmp_path / "nope", unreadable, Path("/etc"), tmp_path, root / ".." / "secret"]
    with ServerThread(config(tmp_path, model_path=root)) as srv, PbkvClient(srv.target) as client:
        answers = set()
        for path in outside:
            with pytest.raises(PbkvError) as info:
                client.reload_model(path)
            answers.add((info.value.code, info.value.message))
        assert answers == {
            (
                Code.INVALID_ARGUMENT,
                "model_path must be the configured model directory or a directory under it",
            )
        }
        assert client.reload_model("v2") == "v2"  # relative: under the model directory
        assert client.reload_model(root / "v2") == "v2"
        model(root, "v3", force=True)
        assert client.reload_model() == "v3"
    with (
        ServerThread(config(tmp_path)) as srv,
        PbkvClient(srv.target) as client,
        pytest.raises(PbkvError) as info,
    ):
        client.reload_model(root)
    assert info.value.code == Code.FAILED_PRECONDITION
    assert "no configured model directory" in info.value.message
