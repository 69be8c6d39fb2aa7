"""Protobuf <-> boundary dataclasses. Protobuf messages stop here: the servicer and the
clients convert on the way in and out; the cache manager and predictor never see them."""

from __future__ import annotations

from collections.abc import Iterable

from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    CachePlan,
    EngineEvent,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.identity_memo import IdentityMemo
from pbkv.predictor.forecast import AgentForecast, Forecast
from pbkv.v1 import pbkv_pb2 as pb

_TIER_TO_PB = {Tier.GPU: pb.TIER_GPU, Tier.CPU: pb.TIER_CPU}
_TIER_FROM_PB = {pb.TIER_GPU: Tier.GPU, pb.TIER_CPU: Tier.CPU}


class ConversionError(ValueError):
    """A message that cannot become a boundary type; the message names the field."""


def _opt(msg, field: str):
    return getattr(msg, field) if msg.HasField(field) else None


def _tier(value: int, field: str, *, allow_none: bool = False) -> Tier | None:
    if value == pb.TIER_UNSPECIFIED and allow_none:
        return None
    try:
        return _TIER_FROM_PB[value]
    except KeyError:
        raise ConversionError(f"{field}: unknown tier {value}") from None


# ---------------------------------------------------------------------------- engine events


def event_to_pb(event: EngineEvent) -> pb.EngineEvent:
    match event:
        case BlockStored():
            msg = pb.BlockStored(
                block_hashes=event.block_hashes,
                tokens_per_block=event.tokens_per_block,
                tier=_TIER_TO_PB[event.tier],
            )
            if event.parent_hash is not None:
                msg.parent_hash = event.parent_hash
            return pb.EngineEvent(block_stored=msg)
        case BlockRemoved():
            return pb.EngineEvent(
                block_removed=pb.BlockRemoved(
                    block_hashes=event.block_hashes, tier=_TIER_TO_PB[event.tier]
                )
            )
        case AllBlocksCleared():
            tier = pb.TIER_UNSPECIFIED if event.tier is None else _TIER_TO_PB[event.tier]
            return pb.EngineEvent(all_blocks_cleared=pb.AllBlocksCleared(tier=tier))
        case RequestStarted():
            msg = pb.RequestStarted(
                request_id=event.request_id,
                block_hashes=event.block_hashes,
                num_prompt_tokens=event.num_prompt_tokens,
                num_gpu_hit_blocks=event.num_gpu_hit_blocks,
                num_cpu_hit_blocks=event.num_cpu_hit_blocks,
            )
            for name in ("workflow_id", "agent", "tenant", "now_s"):
                value = getattr(event, name)
                if value is not None:
                    setattr(msg, name, value)
            return pb.EngineEvent(request_started=msg)
        case RequestFinished():
            msg = pb.RequestFinished(
                request_id=event.request_id, num_output_tokens=event.num_output_tokens
            )
            if event.now_s is not None:
                msg.now_s = event.now_s
            return pb.EngineEvent(request_finished=msg)
    raise TypeError(f"not an engine event: {type(event).__name__}")


def event_from_pb(msg: pb.EngineEvent, engine_id: str, index: int = 0) -> EngineEvent:
    """``index`` is the event's position in its batch (named in errors)."""
    kind = msg.WhichOneof("kind")
    where = f"events[{index}].{kind}"
    if kind == "block_stored":
        m = msg.block_stored
        if m.tokens_per_block <= 0:
            raise ConversionError(f"{where}.tokens_per_block must be > 0")
        return BlockStored(
            engine_id,
            tuple(m.block_hashes),
            _opt(m, "parent_hash"),
            m.tokens_per_block,
            _tier(m.tier, f"{where}.tier"),
        )
    if kind == "block_removed":
        m = msg.block_removed
        return BlockRemoved(engine_id, tuple(m.block_hashes), _tier(m.tier, f"{where}.tier"))
    if kind == "all_blocks_cleared":
        return AllBlocksCleared(
            engine_id, _tier(msg.all_blocks_cleared.tier, f"{where}.tier", allow_none=True)
        )
    if kind == "request_started":
        m = msg.request_started
        if not m.request_id:
            raise ConversionError(f"{where}.request_id is empty")
        if m.num_gpu_hit_blocks + m.num_cpu_hit_blocks > len(m.block_hashes):
            raise ConversionError(
                f"{where}.num_gpu_hit_blocks + num_cpu_hit_blocks exceeds "
                f"len(block_hashes) = {len(m.block_hashes)}"
            )
        return RequestStarted(
            engine_id,
            m.request_id,
            tuple(m.block_hashes),
            m.num_prompt_tokens,
            m.num_gpu_hit_blocks,
            m.num_cpu_hit_blocks,
            _opt(m, "workflow_id"),
            _opt(m, "agent"),
            _opt(m, "tenant"),
            _opt(m, "now_s"),
        )
    if kind == "request_finished":
        m = msg.request_finished
        if not m.request_id:
            raise ConversionError(f"{where}.request_id is empty")
        return RequestFinished(engine_id, m.request_id, m.num_output_tokens, _opt(m, "now_s"))
    raise ConversionError(f"events[{index}]: no event kind set")


# ---------------------------------------------------------------------------- plans


def plan_to_pb(plan: CachePlan) -> pb.CachePlan:
    return pb.CachePlan(
        engine_id=plan.engine_id,
        seq=plan.seq,
        evict_first=plan.evict_first,
        offload=plan.offload,
        prefetch=plan.prefetch,
        created_s=plan.created_s,
        fallback_lru=plan.fallback_lru,
        host_drop_first=plan.host_drop_first,
    )


def plan_from_pb(msg: pb.CachePlan) -> CachePlan:
    return CachePlan(
        engine_id=msg.engine_id,
        seq=msg.seq,
        evict_first=tuple(msg.evict_first),
        offload=tuple(msg.offload),
        prefetch=tuple(msg.prefetch),
        created_s=msg.created_s,
        fallback_lru=msg.fallback_lru,
        host_drop_first=tuple(msg.host_drop_first),
    )


# ---------------------------------------------------------------------------- forecasts


def forecast_to_pb(f: Forecast) -> pb.Forecast:
    msg = pb.Forecast()
    fill_forecast_pb(msg, f)
    return msg


def fill_forecast_pb(msg: pb.Forecast, f: Forecast) -> None:
    """Write ``f`` into an empty ``msg`` in place (a reply's own field: no copy)."""
    msg.workflow_id, msg.step_index, msg.horizon = f.workflow_id, f.step_index, f.horizon
    msg.confidence, msg.model_version = f.confidence, f.model_version
    _fill_agents(msg, f.agents)


def _fill_agents(msg: pb.Forecast, agents: tuple[AgentForecast, ...]) -> None:
    out = msg.agents
    for a in agents:
        if a.eta_steps is None:
            out.add(agent=a.agent, p_within=a.p_within)
        else:
            out.add(agent=a.agent, p_within=a.p_within, eta_steps=a.eta_steps)


class ForecastWriter:
    """``fill_forecast_pb`` for a stream of forecasts that share agents tuples (a caching
    predictor hands back the same tuple for every workflow at the same point): the agents'
    wire bytes are built once per tuple (``IdentityMemo``) and merged into each message,
    3-4x cheaper than adding them field by field, with the same message."""

    def __init__(self, max_entries: int = 1_024) -> None:
        self._agents: IdentityMemo[bytes] = IdentityMemo(max_entries)

    def fill(self, msg: pb.Forecast, f: Forecast) -> None:
        """Write ``f`` into an empty ``msg`` (as ``fill_forecast_pb``)."""
        msg.workflow_id, msg.step_index, msg.horizon = f.workflow_id, f.step_index, f.horizon
        msg.confidence, msg.model_version = f.confidence, f.model_version
        agents = f.agents
        wire = self._agents.get(agents)
        if wire is None:
            only = pb.Forecast()
            _fill_agents(only, agents)
            wire = self._agents.put(agents, None, only.SerializeToString())
        msg.MergeFromString(wire)


def forecast_from_pb(msg: pb.Forecast) -> Forecast:
    return Forecast(
        workflow_id=msg.workflow_id,
        step_index=msg.step_index,
        horizon=msg.horizon,
        agents=tuple(
            AgentForecast(a.agent, tuple(a.p_within), _opt(a, "eta_steps")) for a in msg.agents
        ),
        confidence=msg.confidence,
        model_version=msg.model_version,
    )


# ---------------------------------------------------------------- client requests
def start_request(workflow_id: str, app: str, task: str, now_s: float | None, tenant: str | None):
    req = pb.StartWorkflowRequest(workflow_id=workflow_id, app=app, task=task, tenant=tenant or "")
    if now_s is not None:
        req.now_s = now_s
    return req


def step_started_request(
    workflow_id: str,
    agent: str,
    parallel_group: str | None,
    now_s: float | None,
    tenant: str | None,
):
    req = pb.StepStartedRequest(workflow_id=workflow_id, agent=agent, tenant=tenant or "")
    if parallel_group is not None:
        req.parallel_group = parallel_group
    if now_s is not None:
        req.now_s = now_s
    return req


def step_finished_request(
    workflow_id: str,
    agent: str,
    *,
    output_text: str = "",
    context_text: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    parallel_group: str | None = None,
    step_index: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    phase: str | None = None,
    prompt: Iterable[tuple[str, int]] = (),
    tenant: str | None = None,
):
    req = pb.StepFinishedRequest(
        workflow_id=workflow_id,
        agent=agent,
        output_text=output_text,
        tenant=tenant or "",
        context_text=context_text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        prompt=[pb.PromptSegment(id=i, tokens=t) for i, t in prompt],
    )
    for name, value in (
        ("parallel_group", parallel_group),
        ("step_index", step_index),
        ("start_s", start_s),
        ("end_s", end_s),
        ("phase", phase),
    ):
        if value is not None:
            setattr(req, name, value)
    return req


def end_request(workflow_id: str, now_s: float | None, tenant: str | None):
    req = pb.EndWorkflowRequest(workflow_id=workflow_id, tenant=tenant or "")
    if now_s is not None:
        req.now_s = now_s
    return req


def forecast_of_reply(msg) -> Forecast | None:
    return forecast_from_pb(msg.forecast) if msg.HasField("forecast") else None
