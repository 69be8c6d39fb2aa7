"""``PbkvConnector``: vLLM's out-of-tree KV connector (``kv_connector_module_path``) for pbkv.

Load it with::

    KVTransferConfig(kv_connector="PbkvConnector",
                     kv_connector_module_path="pbkv.engine_adapter.vllm.connector",
                     kv_role="kv_both",
                     kv_connector_extra_config={"engine_id": "vllm-0", "link": "in-process",
                                                "host_tier_blocks": 256})

``kv_transfer_config(ConnectorConfig(...))`` builds that dict (``KVTransferConfig(**it)``, or
``json.dumps(it)`` for ``vllm serve --kv-transfer-config``; docs/deploy.md).

It implements vLLM's ``KVConnectorBase_V1`` hooks and does nothing itself; two parts do::

    BlockReporter (reporter.py)  what the engine caches and which request touched which
                                 blocks -> events to the link (BlockStored / BlockRemoved,
                                 RequestStarted / RequestFinished), incrementally
    PlanApplier   (applier.py)   the link's latest plan -> vLLM's free-queue order and the
                                 host tier's saves, loads and prefetches

Scheduler side, every scheduler step (never waiting on the network)::

    get_num_new_matched_tokens  applier: take the plan (once a step), apply it to the free
                                queue; offer host-tier hits after the GPU hit
    update_state_after_alloc    applier: order host->paged loads; reporter: RequestStarted
    build_connector_meta        reporter: re-announce the cache after a reconnect, report
                                the step's block changes; applier: apply the plan again,
                                order host-tier saves and prefetches -> the step's metadata
    request_finished            reporter: the request's last blocks, RequestFinished

Worker side, ``start_load_kv`` executes the step's host-tier copy orders (saves, then loads,
then drops) before the forward.
No plan, a stale plan or a dead link leave vLLM's own LRU order untouched (fail open).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from pbkv.cache_manager.events import CachePlan, EngineEvent
from pbkv.engine_adapter.vllm import links
from pbkv.engine_adapter.vllm.applier import PlanApplier
from pbkv.engine_adapter.vllm.host_tier import HostKVStore, HostTierIndex, HostTierOps
from pbkv.engine_adapter.vllm.reporter import BlockReporter
from pbkv.engine_adapter.vllm.stats import ConnectorStats


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    engine_id: str = "vllm-0"
    link: str = "in-process"
    service_target: str = "127.0.0.1:50151"
    # A file holding the bearer token (an `engine` role's) when `pbkv serve` has auth on; the
    # token itself never goes into vLLM's flags (they show in `ps` and in vLLM's log).
    service_token_file: str = ""
    service_tls_ca_file: str = ""  # PEM roots: connect to the service with TLS
    host_tier_blocks: int = 0  # 0: no host tier
    max_saves_per_step: int = 64  # host-tier copies ordered per step (saves; prefetches)
    prefetch: bool = True  # request-less prefetch of the plan's host-tier blocks
    # No plan is taken while this many never-used blocks head the free queue (nothing cached
    # can be evicted soon, so order does not matter); 0: four steps' worth of allocation
    # (max_num_batched_tokens / block_size + max_num_seqs, per step), 16 with a host tier
    # (write-through must start before eviction does).
    plan_margin_blocks: int = 0
    # A full host tier drops first its copies of GPU blocks outside the next this-many cached
    # blocks the GPU evicts (the tiers then hold more distinct blocks); 0: keep them (vLLM's
    # CPU offloading and SGLang's HiCache keep every copy).
    exclusive_margin_blocks: int = 0
    selftest: bool = True

    def __post_init__(self) -> None:
        if self.link not in links.LINKS:
            raise ValueError(
                f"kv_connector_extra_config 'link' must be one of "
                f"{links.LINKS.names()}, got {self.link!r}"
            )
        if not self.engine_id:
            raise ValueError("kv_connector_extra_config 'engine_id' must not be empty")
        if self.host_tier_blocks < 0:
            raise ValueError(
                f"kv_connector_extra_config 'host_tier_blocks' must be >= 0, "
                f"got {self.host_tier_blocks}"
            )
        if self.plan_margin_blocks < 0:
            raise ValueError(
                f"kv_connector_extra_config 'plan_margin_blocks' must be >= 0, "
                f"got {self.plan_margin_blocks}"
            )
        if self.exclusive_margin_blocks < 0:
            raise ValueError(
                f"kv_connector_extra_config 'exclusive_margin_blocks' must be >= 0, "
                f"got {self.exclusive_margin_blocks}"
            )
        if self.max_saves_per_step < 0:
            raise ValueError(
                f"kv_connector_extra_config 'max_saves_per_step' must be >= 0, "
                f"got {self.max_saves_per_step}"
            )

    def service_access(self) -> dict[str, Any]:
        """The link's ``token`` and ``tls_ca_file`` (read now; a file that cannot be read or
        holds no token is a ``ValueError`` naming the key)."""
        token = None
        if self.service_token_file:
            try:
                token = Path(self.service_token_file).read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"kv_connector_extra_config 'service_token_file': cannot read "
                    f"{self.service_token_file!r}: {exc.strerror}"
                ) from None
            if not token:
                raise ValueError(
                    f"kv_connector_extra_config 'service_token_file': "
                    f"{self.service_token_file!r} holds no token"
                )
        ca = Path(self.service_tls_ca_file) if self.service_tls_ca_file else None
        if ca is not None and not ca.is_file():
            raise ValueError(
                f"kv_connector_extra_config 'service_tls_ca_file': no file {str(ca)!r}"
            )
        return {"token": token, "tls_ca_file": ca}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> ConnectorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(
                f"kv_connector_extra_config: unknown keys {unknown}; known: {sorted(known)}"
            )
        return cls(**extra)


def kv_transfer_config(config: ConnectorConfig) -> dict[str, Any]:
    """vLLM's ``KVTransferConfig`` fields that load this connector with ``config``."""
    return {
        "kv_connector": "PbkvConnector",
        "kv_connector_module_path": __name__,
        "kv_role": "kv_both",
        "kv_connector_extra_config": asdict(config),
    }


@dataclass
class PbkvConnectorMetadata(KVConnectorMetadata):
    ops: HostTierOps = field(default_factory=HostTierOps)


def _timed(hook: Any) -> Any:
    """Count a scheduler-side hook's wall time in ``stats.scheduler_s`` (what pbkv adds to
    each engine step)."""

    @functools.wraps(hook)
    def wrapper(self: PbkvConnector, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.stats.scheduler_s += time.perf_counter() - t0

    return wrapper


class PbkvConnector(KVConnectorBase_V1):
    """vLLM's connector hooks, delegated: what the engine did goes to ``reporter``, what the
    plan says is done by ``applier``; both reach pbkv only through ``link``, which
    ``set_link`` may swap."""

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(
            dict(self._kv_transfer_config.kv_connector_extra_config)
        )
        self.block_size = vllm_config.cache_config.block_size
        self.stats = ConnectorStats()
        sched = vllm_config.scheduler_config
        step_blocks = (
            -(-sched.max_num_batched_tokens // self.block_size) + sched.max_num_seqs
        )  # the most blocks one step can allocate
        # scheduler side
        self.pool: Any = None
        self.link: links.EngineLink = links.NullLink()
        self.reporter = BlockReporter(
            self.config.engine_id, self.block_size, step_blocks, self._send, self.stats
        )
        self.applier = PlanApplier(
            self.reporter,
            self._latest_plan,
            self.stats,
            step_blocks=step_blocks,
            host_tier_blocks=self.config.host_tier_blocks,
            max_saves_per_step=self.config.max_saves_per_step,
            prefetch=self.config.prefetch,
            plan_margin_blocks=self.config.plan_margin_blocks,
            exclusive_margin_blocks=self.config.exclusive_margin_blocks,
        )
        # Set to a list to record each step's batch shape (cost-model calibration).
        self.step_log: list[tuple[list[tuple[int, int]], list[int]]] | None = None
        # worker side
        self.store = HostKVStore()
        self._num_blocks = getattr(kv_cache_config, "num_blocks", 0)

    def _send(self, event: EngineEvent) -> None:
        self.link.send(event)

    def _latest_plan(self) -> CachePlan | None:
        return self.link.latest_plan()

    @property
    def host(self) -> HostTierIndex:
        """The host tier's scheduler-side index (``applier.host``)."""
        return self.applier.host

    # ------------------------------------------------------------------ scheduler side
    def bind_gpu_block_pool(self, gpu_block_pool: Any) -> None:
        if self.config.selftest:
            from pbkv.engine_adapter.vllm.selftest import check_block_pool

            check_block_pool(gpu_block_pool)
        self.pool = self.reporter.pool = self.applier.pool = gpu_block_pool
        self.link = links.LINKS.create(
            self.config.link,
            self.config.engine_id,
            self.config.service_target,
            **self.config.service_access(),
        )
        # A native OffloadingConnector beside this one (CUDA) orders its CPU tier by our plan.
        from pbkv.engine_adapter.vllm.cache_policy import set_plan_source

        set_plan_source(lambda: self.applier.plan)
        self.link.attach(
            gpu_blocks=gpu_block_pool.num_gpu_blocks - 1,  # minus the null block
            cpu_blocks=self.config.host_tier_blocks,
            tokens_per_block=self.block_size,
        )

    @_timed
    def get_num_new_matched_tokens(
        self, request: Any, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        self.applier.refresh_plan()
        self.reporter.gpu_hit(request.request_id, num_computed_tokens // self.block_size)
        return self.applier.host_hit_tokens(request, num_computed_tokens), False

    @_timed
    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        num_cpu_hit = self.applier.load_host_hits(request, blocks, num_external_tokens)
        self.reporter.request_started(request, num_cpu_hit)

    @_timed
    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        self.stats.steps += 1
        if self.step_log is not None:
            self.step_log.append(batch_shape(scheduler_output, self.reporter.live))
        stable = self.reporter.stable_blocks()  # computed in an earlier step: safe to copy
        if self.link.resync_needed():
            self.reporter.resync(self.applier.host.hashes())
        self.reporter.report_block_changes()
        ops = self.applier.end_step(stable)
        self.reporter.end_step()
        return PbkvConnectorMetadata(ops=ops)

    @_timed
    def request_finished(
        self, request: Any, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        self.applier.forget(request.request_id)
        self.reporter.request_finished(request)
        return False, None

    def set_link(self, link: links.EngineLink) -> None:
        """Report to ``link`` from now on (a fresh manager: it is told the cache anew)."""
        self.link = link
        self.reporter.forget_gpu()
        self.applier.forget_plan()

    def reset_host_tier(
        self, capacity_blocks: int | None = None, exclusive_margin_blocks: int | None = None
    ) -> None:
        """Empty the host tier (the worker frees the tensors on the next step); optionally
        resize it and set its exclusive margin (``ConnectorConfig.exclusive_margin_blocks``)."""
        self.applier.reset_host_tier(capacity_blocks, exclusive_margin_blocks)

    def shutdown(self) -> None:
        if self._role == KVConnectorRole.SCHEDULER:
            self.link.close()

    # ------------------------------------------------------------------ worker side
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        num_blocks = self._num_blocks or self._kv_cache_config.num_blocks
        self.store.register(kv_caches, num_blocks)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if isinstance(meta, PbkvConnectorMetadata) and meta.ops:
            self.store.execute(meta.ops)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(
        self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any
    ) -> None:
        return None

    def wait_for_save(self) -> None:
        return None


def batch_shape(out: Any, live: Mapping[str, Any]) -> tuple[list[tuple[int, int]], list[int]]:
    """A step's batch as (prefill chunks as (new tokens, tokens before them), decode context
    lengths); ``live``: the started requests by id."""
    scheduled = out.num_scheduled_tokens
    prefills = [(scheduled[r.req_id], r.num_computed_tokens) for r in out.scheduled_new_reqs]
    decodes: list[int] = []
    cached = out.scheduled_cached_reqs
    for rid, ctx in zip(cached.req_ids, cached.num_computed_tokens, strict=True):
        n = scheduled[rid]
        request = live.get(rid)
        if n == 1 and request is not None and ctx >= request.num_prompt_tokens:
            decodes.append(ctx)
        else:
            prefills.append((n, ctx))
    return prefills, decodes
