"""The simulated engine's toy set-up shared by tests (importable as ``sim_support``): a cost
model with round numbers (1 ms per prompt token and per decode step, 4 bytes/s links, 1 KV
byte per token) and ``H``, the block hashes of 4-token blocks."""

from __future__ import annotations

from collections.abc import Sequence

from pbkv.engine_adapter.block_hash import block_hashes
from pbkv.engine_adapter.sim.cost_model import CostModel

COST = CostModel(
    prefill_s_per_token=1e-3,
    prefill_s_per_token_ctx=0.0,
    decode_s_per_step=1e-3,
    decode_s_per_seq=0.0,
    decode_s_per_ctx_token=0.0,
    iteration_overhead_s=0.0,
    kv_bytes_per_token=1,
    h2d_bytes_per_s=4.0,
    d2h_bytes_per_s=4.0,
)


def H(tokens: Sequence[int]) -> list[bytes]:  # noqa: N802 - reads like the H[i] hashes
    return block_hashes(tokens, 4)
