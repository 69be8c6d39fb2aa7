"""Named cost-model presets (``PRESETS.create(name)``); every number is sourced in
``docs/simulator.md``.

``h100-llama8b`` is derived from hardware figures; ``vllm-cpu`` is fitted from measurements of
vLLM's CPU engine and read from ``calibration/vllm-cpu.json`` (schema: the ``CostModel`` field
names, plus optional ``"tokens_per_block"`` and any keys starting with ``"_"`` for notes
such as the measurement command). Until that file exists the preset uses placeholder
constants marked ``calibrated: False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.registry import Registry

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    cost: CostModel
    tokens_per_block: int
    calibrated: bool
    source: str  # where the numbers come from (a path or "derived: ...")
    gpu_blocks: int | None = None  # KV blocks of the full-size device (None: not modelled)


PRESETS: Registry[Preset] = Registry("engine preset")


def llama_kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V for every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


@PRESETS.register("h100-llama8b")
def h100_llama8b() -> Preset:
    params = 8.03e9  # Llama-3-8B parameters
    layers, d_model = 32, 4096
    peak_flops = 989e12  # H100 SXM bf16 dense
    mfu = 0.5  # assumed model-FLOPs utilisation of prefill
    hbm = 3.35e12 * 0.8  # H100 SXM HBM3 bandwidth, 80% achievable
    flops = peak_flops * mfu
    cost = CostModel(
        prefill_s_per_token=2 * params / flops,
        # QK^T and AV: 2 matmuls x 2 FLOPs x d_model per layer per (query, key) pair.
        prefill_s_per_token_ctx=4 * layers * d_model / flops,
        decode_s_per_step=2 * params / hbm,  # bf16 weights read once per iteration
        decode_s_per_seq=2 * params / flops,
        decode_s_per_ctx_token=llama_kv_bytes_per_token(32, 8, 128, 2) / hbm,
        iteration_overhead_s=1e-3,  # scheduler + launch overhead (assumed)
        kv_bytes_per_token=llama_kv_bytes_per_token(32, 8, 128, 2),  # 131072
        h2d_bytes_per_s=50e9,  # PCIe 5 x16, effective per direction
        d2h_bytes_per_s=50e9,
        transfer_latency_s=10e-6,
    )
    # Full-size KV cache: 80 GB HBM3 x 0.9 (vLLM's gpu_memory_utilization default) less the
    # bf16 weights and ~3 GB of activations / workspace (assumed), in 16-token blocks: ~25k.
    block_bytes = cost.block_bytes(16)
    gpu_blocks = int((80e9 * 0.9 - 2 * params - 3e9) // block_bytes)
    return Preset(
        "h100-llama8b",
        cost,
        tokens_per_block=16,
        calibrated=False,
        source="derived: H100 SXM + Llama-3-8B figures (docs/simulator.md)",
        gpu_blocks=gpu_blocks,
    )


# Placeholders until engine_adapter/sim/calibration/vllm-cpu.json holds measured numbers:
# a tiny random-weight model on 2 CPU cores, order-of-magnitude guesses only.
VLLM_CPU_PLACEHOLDER: dict[str, Any] = {
    "prefill_s_per_token": 2e-4,
    "prefill_s_per_token_ctx": 2e-8,
    "decode_s_per_step": 5e-3,
    "decode_s_per_seq": 5e-4,
    "decode_s_per_ctx_token": 1e-7,
    "iteration_overhead_s": 2e-3,
    "kv_bytes_per_token": 2 * 4 * 4 * 64 * 4,
    "h2d_bytes_per_s": 5e9,
    "d2h_bytes_per_s": 5e9,
    "transfer_latency_s": 20e-6,
}


def load_calibration(path: Path, name: str = "vllm-cpu") -> Preset:
    """A preset from a calibration JSON file (see the module docstring for the schema)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    fields = {k: v for k, v in data.items() if not k.startswith("_")}
    tokens_per_block = fields.pop("tokens_per_block", 16)
    if not isinstance(tokens_per_block, int) or tokens_per_block <= 0:
        raise ValueError(
            f"{path}: tokens_per_block must be a positive integer, got {tokens_per_block!r}"
        )
    cost = CostModel.from_dict(fields, source=str(path))
    return Preset(name, cost, tokens_per_block=tokens_per_block, calibrated=True, source=str(path))


@PRESETS.register("vllm-cpu")
def vllm_cpu(calibration: Path | None = None) -> Preset:
    path = calibration or CALIBRATION_DIR / "vllm-cpu.json"
    if Path(path).exists():
        return load_calibration(path)
    return Preset(
        "vllm-cpu",
        CostModel(**VLLM_CPU_PLACEHOLDER),
        tokens_per_block=16,
        calibrated=False,
        source="placeholder constants (uncalibrated)",
    )
