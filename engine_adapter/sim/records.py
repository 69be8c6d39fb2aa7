"""The simulated engine's boundary records: its configuration, a request, a finished
request's result and the engine's counters (``SimEngine`` re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineConfig:
    gpu_blocks: int
    cpu_blocks: int = 0
    tokens_per_block: int = 16
    engine_id: str = "sim0"
    max_batch_seqs: int = 256  # vLLM max_num_seqs
    max_batch_tokens: int = 8192  # chunked-prefill token budget per iteration
    plan_max_age_s: float | None = None  # a plan older than this (engine clock) is ignored
    transfer_window_s: float = 0.05  # how far ahead background transfers may book a link
    # Prefetch a block only once its parent is on the GPU, as pbkv's vLLM adapter does (a
    # block whose parent is missing cannot be hit: prefix matching stops at the gap).
    prefetch_needs_parent: bool = False
    # The vLLM adapter's host tier instead of the default one: each iteration, write through
    # at most this many computed blocks -- the plan's ``offload``, then blocks the plan has
    # not ranked (newest first, not ``evict_first``) while the CPU tier has room -- and never
    # write back at eviction (vLLM evicts lazily, where no hook runs). 0: write-back on
    # eviction plus background offload of ``offload`` within ``transfer_window_s`` (an
    # idealised GPU tier).
    write_through_per_iteration: int = 0
    # When the CPU tier is written. "plan": write-back at eviction and background offload of
    # the plan's ``offload`` (above). "compute": store on compute, as vLLM's
    # OffloadingConnector does: every full prompt block a request computes or hits and the
    # tier lacks is written as the request's prefill advances, the tier dropping its LRU
    # block for it; nothing is written at eviction.
    cpu_write: str = "plan"
    # SGLang HiRadixCache's ``evict_host``: the tier drops only copies of blocks no longer on
    # the GPU; when every copy is of a GPU-resident (or protected) block, the write is dropped.
    cpu_spares_gpu_copies: bool = False
    # Charge the planner to simulated time: each plan pull's measured CPU time is added to
    # the clock (``planner_s``), and a step sees the plan pulled ``plan_delay_s`` earlier.
    charge_planner: bool = False
    plan_delay_s: float = 0.0
    # A bound, not a machine: cached blocks nobody uses take no slot, so nothing is ever
    # evicted and every reuse hits; only blocks in use count against ``gpu_blocks``.
    ideal_cache: bool = False

    def __post_init__(self) -> None:
        for name in ("gpu_blocks", "tokens_per_block", "max_batch_seqs", "max_batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.cpu_blocks, int) or self.cpu_blocks < 0:
            raise ValueError(
                f"EngineConfig.cpu_blocks must be an integer >= 0, got {self.cpu_blocks!r}"
            )
        if self.plan_max_age_s is not None and not self.plan_max_age_s > 0:
            raise ValueError(
                f"EngineConfig.plan_max_age_s must be positive or None, got {self.plan_max_age_s}"
            )
        if self.cpu_write not in ("plan", "compute"):
            raise ValueError(
                f"EngineConfig.cpu_write must be 'plan' or 'compute', got {self.cpu_write!r}"
            )
        if not self.plan_delay_s >= 0:
            raise ValueError(f"EngineConfig.plan_delay_s must be >= 0, got {self.plan_delay_s}")
        if not self.transfer_window_s >= 0:
            raise ValueError(
                f"EngineConfig.transfer_window_s must be >= 0, got {self.transfer_window_s}"
            )


@dataclass(frozen=True, slots=True)
class SimRequest:
    request_id: str
    token_ids: tuple[int, ...]
    output_tokens: int
    workflow_id: str | None = None
    agent: str | None = None
    tenant: str | None = None
    # Precomputed ``block_hashes(token_ids, tokens_per_block)`` (a replay reuses them).
    block_hashes: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class RequestResult:
    request_id: str
    workflow_id: str | None
    agent: str | None
    submit_s: float
    admit_s: float
    first_token_s: float
    finish_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    gpu_hit_blocks: int
    cpu_hit_blocks: int
    computed_prompt_tokens: int
    load_wait_s: float  # admission -> all its loads / write-backs done


@dataclass(frozen=True, slots=True)
class EngineStats:
    now_s: float
    iterations: int
    busy_s: float
    stall_s: float
    requests_finished: int
    prompt_tokens: int
    computed_prompt_tokens: int
    output_tokens: int
    lookup_blocks: int
    gpu_hit_blocks: int
    cpu_hit_blocks: int
    h2d_bytes: int
    d2h_bytes: int
    prefetched_blocks: int
    prefetch_used_blocks: int
    offloaded_blocks: int
    gpu_evictions: int
    cpu_evictions: int
    dropped_writebacks: int = 0  # write-backs dropped: no CPU block could be dropped for it
    planner_s: float = 0.0  # planner CPU time charged to the clock (``charge_planner``)

    @property
    def gpu_hit_rate(self) -> float:
        return self.gpu_hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0

    @property
    def cpu_hit_rate(self) -> float:
        return self.cpu_hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0
