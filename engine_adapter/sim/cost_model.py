"""How long the simulated GPU takes: one engine iteration (a continuous batch) and transfers.

The model is linear in coefficients that can be fitted from measurements (the ``vllm-cpu``
preset is) or derived from hardware figures (the ``h100-llama8b`` preset is)::

    iteration_s = iteration_overhead_s
                + sum over prefill chunks  [ n * prefill_s_per_token
                                             + n * (ctx + (n + 1) / 2) * prefill_s_per_token_ctx ]
                + (decode batch > 0) * decode_s_per_step          # weights streamed once
                + decode batch size * decode_s_per_seq            # per-token compute
                + sum of decode contexts * decode_s_per_ctx_token # KV streamed per token

``n`` is a chunk's new (computed) tokens, ``ctx`` the tokens already in the KV cache before it
(cache hits included): each new token attends over everything before it, which is the
quadratic attention term. Decode is memory-bound: every iteration reads the weights once and
each running sequence's KV. Transfers over the host link take ``bytes / bandwidth`` plus a
fixed latency per transfer. ``transfer_overlap`` is the share of that time hidden behind
compute: 1 on a GPU (DMA engines copy while kernels run; see ``engine.py``), 0 on vLLM's CPU
backend, where the worker copies host-tier blocks with the CPU at the start of the step, so the
copy time adds to the iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class CostModel:
    """Coefficients in seconds and bytes (all finite, non-negative; bandwidths positive)."""

    prefill_s_per_token: float
    prefill_s_per_token_ctx: float
    decode_s_per_step: float
    decode_s_per_seq: float
    decode_s_per_ctx_token: float
    iteration_overhead_s: float
    kv_bytes_per_token: int
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    transfer_latency_s: float = 0.0
    transfer_overlap: float = 1.0  # share of transfer time hidden behind compute (0..1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                not isinstance(value, int | float)
                or math.isnan(value)
                or value < 0
                or math.isinf(value)
            ):
                raise ValueError(f"CostModel.{f.name} must be a finite number >= 0, got {value!r}")
        if self.transfer_overlap > 1:
            raise ValueError(
                f"CostModel.transfer_overlap must be in [0, 1], got {self.transfer_overlap!r}"
            )
        for name in ("h2d_bytes_per_s", "d2h_bytes_per_s", "kv_bytes_per_token"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CostModel.{name} must be positive, got {getattr(self, name)}")

    def prefill_s(self, new_tokens: int, context_tokens: int) -> float:
        """Compute time of ``new_tokens`` prompt tokens after ``context_tokens`` cached ones."""
        n, ctx = new_tokens, context_tokens
        return n * self.prefill_s_per_token + n * (ctx + (n + 1) / 2) * self.prefill_s_per_token_ctx

    def decode_s(self, contexts: Iterable[int]) -> float:
        """One decode step for a batch of sequences with these context lengths."""
        batch, total_ctx = 0, 0
        for c in contexts:
            batch += 1
            total_ctx += c
        if batch == 0:
            return 0.0
        return (
            self.decode_s_per_step
            + batch * self.decode_s_per_seq
            + total_ctx * self.decode_s_per_ctx_token
        )

    def iteration_s(
        self, prefills: Iterable[tuple[int, int]], decode_contexts: Iterable[int]
    ) -> float:
        """One continuous-batching iteration: prefill chunks ``(new, ctx)`` plus decodes."""
        return (
            self.iteration_overhead_s
            + sum(self.prefill_s(n, c) for n, c in prefills)
            + self.decode_s(decode_contexts)
        )

    def block_bytes(self, tokens_per_block: int) -> int:
        return self.kv_bytes_per_token * tokens_per_block

    def h2d_s(self, num_bytes: int) -> float:
        """CPU->GPU load of ``num_bytes`` (one transfer)."""
        return self.transfer_latency_s + num_bytes / self.h2d_bytes_per_s if num_bytes else 0.0

    def d2h_s(self, num_bytes: int) -> float:
        """GPU->CPU write-back of ``num_bytes`` (one transfer)."""
        return self.transfer_latency_s + num_bytes / self.d2h_bytes_per_s if num_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "cost model") -> CostModel:
        """Build from a JSON object; unknown or missing keys are errors naming ``source``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"{source}: unknown cost-model field(s) {unknown}; known: {sorted(names)}"
            )
        optional = {"transfer_latency_s", "transfer_overlap"}
        required = {f.name for f in fields(cls) if f.name not in optional}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"{source}: missing cost-model field(s) {missing}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None
