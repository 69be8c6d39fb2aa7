"""The Operator service: stats (also the dashboard's source), running workflows (read from the
manager, which alone knows them) and model hot reload.

With auth on, a tenant's GetStats and ListWorkflows show its own workflows only (no other
tenant's apps or agents, no global counts, no server paths); the operator (and the dashboard
role) sees everything, and only the operator may reload the model (the gate, service/auth.py).
ReloadModel loads from the configured model directory or a directory under it, nothing else:
a path outside it is refused before the filesystem is touched."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pbkv.service.recorder import Recorder
from pbkv.service.servicers.engines import EngineLinkServicer
from pbkv.service.servicers.wiring import (
    Wiring,
    call_tenant,
    caller,
    metadata_tenant,
    rpc,
    sees_all_tenants,
)
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
    def __init__(
        self,
        wiring: Wiring,
        recorder: Recorder,
        engines: EngineLinkServicer,
        *,
        model: ModelInfo | None = None,
    ) -> None:
        self.wiring = wiring
        self.manager = wiring.manager
        self.recorder = recorder
        self.model = model or ModelInfo(None, "", None)
        self._engines = engines
        self._reload_lock = asyncio.Lock()
        self.model_reloads = 0
        # Merged into stats_dict() (e.g. the demo's "baseline_lru" twin for the dashboard).
        self.extra_stats: dict[str, Any] = {}
        # Sections computed at each stats_dict() (e.g. "otlp": the OTLP receiver's counters).
        self.stats_sections: dict[str, Callable[[], dict[str, Any]]] = {}
        self.wrap_predictor = lambda predictor: predictor  # cluster mode: the replica's
        self.cluster_stats = None  # cluster mode: the replica's stats() for the dashboard

    def stats_dict(self) -> dict[str, Any]:
        stats = self.manager.stats()
        out = dict(stats.to_dict()) if hasattr(stats, "to_dict") else {}
        out.update(self.extra_stats)
        out["plan_age_s_by_engine"] = self._engines.plan_ages_s()
        if self.cluster_stats is not None:
            out["cluster"] = self.cluster_stats()
        rec = self.recorder.stats()
        out["service"] = {
            "active_workflows": self.manager.active_count(),
            "engines": sorted(self.manager.engine_ids()),
            "attached_streams": self._engines.attached_streams,
            "store": self.recorder.store.describe(),
            "events_recorded": rec.recorded,
            "store_commits": rec.commits,
            "store_pending": rec.pending,
            "store_failed": rec.failed,
            "model_path": str(self.model.path) if self.model.path else None,
            "model_version": self.model.version,
            **self._engines.counters,
            "model_reloads": self.model_reloads,
        }
        for name, section in self.stats_sections.items():
            out[name] = section()
        return out

    def tenant_stats(self, tenant: str) -> dict[str, Any]:
        """What one tenant may see: its running workflows, their apps and agents."""
        apps: Counter[str] = Counter()
        agents: set[str] = set()
        for state in self.manager.active_workflows():
            if state.tenant == tenant:
                apps[state.app] += 1
                agents.update(step.agent for step in state.steps)
        count = sum(apps.values())
        return {
            "tenant": tenant,
            "active_workflows": count,
            "apps": dict(sorted(apps.items())),
            "agents": sorted(agents),
            "service": {"active_workflows": count},
        }

    @rpc("GetStats")
    async def GetStats(self, request: pb.GetStatsRequest, context):  # noqa: N802
        who = caller()
        stats = (
            self.tenant_stats(who.tenant)
            if who is not None and who.tenant is not None
            else self.stats_dict()
        )
        return pb.GetStatsResponse(stats_json=json.dumps(stats, default=str))

    @rpc("ListWorkflows")
    async def ListWorkflows(self, request: pb.ListWorkflowsRequest, context):  # noqa: N802
        # The operator (auth on) names a tenant or sees them all; others see their own.
        every = sees_all_tenants() and not (request.tenant or metadata_tenant(context))
        tenant = None if every else call_tenant(request.tenant, context)
        limit = request.limit or LIST_LIMIT
        out = []
        for state in self.manager.active_workflows():
            if tenant is not None and state.tenant != tenant:
                continue
            out.append(
                pb.WorkflowSummary(
                    workflow_id=state.workflow_id.split("/", 1)[1],
                    app=state.app,
                    tenant=state.tenant,
                    task=state.task,
                    num_steps=state.step_index,
                    last_agent=state.steps[-1].agent if state.steps else "",
                    started_s=state.started_s,
                )
            )
            if len(out) >= limit:
                break
        return pb.ListWorkflowsResponse(workflows=out)

    @rpc("ReloadModel")
    async def ReloadModel(self, request: pb.ReloadModelRequest, context):  # noqa: N802
        await self.reload_model(self.reload_path(request.model_path))
        return pb.ReloadModelResponse(model_version=self.model.version)

    def reload_path(self, requested: str) -> Path:
        """The configured model directory, or ``requested`` when it lies under it (after
        resolving ``..`` and symlinks). Anything else is refused with one answer, whatever
        is or is not at that path."""
        root = self.wiring.config.model_path
        if root is None:
            raise RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the service has no configured model directory (pbkv serve "
                "--model); ReloadModel reloads only from it",
            )
        if not requested:
            return root
        base = root.resolve()
        path = (base / requested).resolve()  # relative: under the model directory
        if not path.is_relative_to(base):
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                "model_path must be the configured model directory or a directory under it",
            )
        return path

    async def reload_model(self, path: Path) -> ModelInfo:
        """Load an artifact off the loop thread and swap it in; the streams stay up."""
        from pbkv.predictor.artifact import ArtifactError

        async with self._reload_lock:
            try:
                predictor, info = await asyncio.to_thread(load_model_info, path)
            except ArtifactError as exc:
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, f"model_path: {exc}") from exc
            self.manager.set_predictor(self.wrap_predictor(predictor))
            self.model = info
            self.model_reloads += 1
            log.info("model %s loaded from %s", info.version, path)
            return info


def load_model_info(path: Path):
    from pbkv.predictor.artifact import load_model, read_metadata

    meta = read_metadata(path)
    predictor = load_model(path)
    version = str(
        meta.get("version") or f"{meta.get('kind', 'model')}@{int(meta.get('created_unix_s', 0))}"
    )
    mtime = (path / "metadata.json").stat().st_mtime_ns
    return predictor, ModelInfo(path, version, mtime)
