"""The Operator service: stats (also the dashboard's source), the tenant's running workflows
(read from the manager, which alone knows them) and model hot reload."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pbkv.service.recorder import Recorder
from pbkv.service.servicers.engines import EngineLinkServicer
from pbkv.service.servicers.wiring import Wiring, call_tenant, rpc
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LIST_LIMIT = 1_000  # ListWorkflows answers at most this many when the request sets no limit


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path | None
    version: str
    mtime_ns: int | None


class OperatorServicer(pb_grpc.OperatorServicer):
    def __init__(self, wiring: Wiring, recorder: Recorder, engines: EngineLinkServicer, *,
                 model: ModelInfo | None = None) -> None:
        self.wiring = wiring
        self.manager = wiring.manager
        self.recorder = recorder
        self.model = model or ModelInfo(None, "", None)
        self._engines = engines
        self._reload_lock = asyncio.Lock()
        self.model_reloads = 0
        # Merged into stats_dict() (e.g. the demo's "baseline_lru" twin for the dashboard).
        self.extra_stats: dict[str, Any] = {}

    def stats_dict(self) -> dict[str, Any]:
        stats = self.manager.stats()
        out = dict(stats.to_dict()) if hasattr(stats, "to_dict") else {}
        out.update(self.extra_stats)
        rec = self.recorder.stats()
        out["service"] = {
            "active_workflows": self.manager.active_count(),
            "engines": sorted(self.manager.engine_ids()),
            "attached_streams": self._engines.attached_streams,
            "store": self.recorder.store.describe(),
            "events_recorded": rec.recorded, "store_commits": rec.commits,
            "store_pending": rec.pending, "store_failed": rec.failed,
            "model_path": str(self.model.path) if self.model.path else None,
            "model_version": self.model.version,
            **self._engines.counters,
            "model_reloads": self.model_reloads,
        }
        return out

    @rpc("GetStats")
    async def GetStats(self, request: pb.GetStatsRequest, context):  # noqa: N802
        return pb.GetStatsResponse(stats_json=json.dumps(self.stats_dict(), default=str))

    @rpc("ListWorkflows")
    async def ListWorkflows(self, request: pb.ListWorkflowsRequest, context):  # noqa: N802
        tenant = call_tenant(request.tenant, context)
        limit = request.limit or LIST_LIMIT
        out = []
        for state in self.manager.active_workflows():
            if state.tenant != tenant:
                continue
            out.append(pb.WorkflowSummary(
                workflow_id=state.workflow_id.split("/", 1)[1], app=state.app,
                tenant=state.tenant, task=state.task, num_steps=state.step_index,
                last_agent=state.steps[-1].agent if state.steps else "",
                started_s=state.started_s))
            if len(out) >= limit:
                break
        return pb.ListWorkflowsResponse(workflows=out)

    @rpc("ReloadModel")
    async def ReloadModel(self, request: pb.ReloadModelRequest, context):  # noqa: N802
        raw = request.model_path or (str(self.model.path) if self.model.path else "")
        if not raw:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             "model_path is empty and the service has no configured model")
        await self.reload_model(Path(raw))
        return pb.ReloadModelResponse(model_version=self.model.version)

    async def reload_model(self, path: Path) -> ModelInfo:
        """Load an artifact off the loop thread and swap it in; the streams stay up."""
        from pbkv.predictor.artifact import ArtifactError

        async with self._reload_lock:
            try:
                predictor, info = await asyncio.to_thread(load_model_info, path)
            except ArtifactError as exc:
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"model_path: {exc}") from exc
            self.manager.set_predictor(predictor)
            self.model = info
            self.model_reloads += 1
            log.info("model %s loaded from %s", info.version, path)
            return info


def load_model_info(path: Path):
    from pbkv.predictor.artifact import load_model, read_metadata

    meta = read_metadata(path)
    predictor = load_model(path)
    version = str(meta.get("version") or f"{meta.get('kind', 'model')}@"
                  f"{int(meta.get('created_unix_s', 0))}")
    mtime = (path / "metadata.json").stat().st_mtime_ns
    return predictor, ModelInfo(path, version, mtime)
