"""The committed stubs are exactly what ``proto/generate.py`` produces from the .proto."""

from __future__ import annotations

import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generate = runpy.run_path(str(REPO / "proto" / "generate.py"))["generate"]
    written = generate(tmp_path)
    assert [p.name for p in written] == ["pbkv_pb2.py", "pbkv_pb2_grpc.py"]
    for fresh in written:
        committed = REPO / "proto" / "pbkv" / "v1" / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed} is stale: run `python proto/generate.py`"
        )


def test_stubs_import_under_the_pbkv_namespace() -> None:
    from pbkv.v1 import pbkv_pb2, pbkv_pb2_grpc

    assert pbkv_pb2.DESCRIPTOR.package == "pbkv.v1"
    assert hasattr(pbkv_pb2_grpc, "EngineLinkStub")
    assert {s for s in pbkv_pb2.DESCRIPTOR.services_by_name} == {
        "Orchestrator",
        "EngineLink",
        "Operator",
    }
