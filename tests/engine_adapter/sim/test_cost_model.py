"""Cost model units: every term in seconds, exactly as documented."""

from __future__ import annotations

import json

import pytest

from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.presets import PRESETS, llama_kv_bytes_per_token, load_calibration


def _cost(**kw) -> CostModel:
    base = dict(
        prefill_s_per_token=1e-3,
        prefill_s_per_token_ctx=1e-6,
        decode_s_per_step=5e-3,
        decode_s_per_seq=1e-4,
        decode_s_per_ctx_token=1e-7,
        iteration_overhead_s=1e-3,
        kv_bytes_per_token=100,
        h2d_bytes_per_s=1e6,
        d2h_bytes_per_s=2e6,
        transfer_latency_s=1e-5,
    )
    base.update(kw)
    return CostModel(**base)


def test_prefill_linear_plus_attention_over_context() -> None:
    c = _cost()
    # 10 new tokens after 90 cached: 10 * 1e-3 + 10 * (90 + 5.5) * 1e-6
    assert c.prefill_s(10, 90) == pytest.approx(0.01 + 10 * 95.5e-6)
    # The same tokens cost more the longer the context before them.
    assert c.prefill_s(10, 1000) > c.prefill_s(10, 90)


def test_decode_is_batch_aware() -> None:
    c = _cost()
    assert c.decode_s([]) == 0.0
    one = c.decode_s([1000])
    assert one == pytest.approx(5e-3 + 1e-4 + 1000 * 1e-7)
    # Eight sequences share the weight read: far less than eight single steps.
    assert c.decode_s([1000] * 8) == pytest.approx(5e-3 + 8e-4 + 8000 * 1e-7)
    assert c.decode_s([1000] * 8) < 2 * one


def test_iteration_and_transfers() -> None:
    c = _cost()
    assert c.iteration_s([(10, 90)], [1000]) == pytest.approx(
        1e-3 + c.prefill_s(10, 90) + c.decode_s([1000])
    )
    assert c.block_bytes(16) == 1600
    assert c.h2d_s(1600) == pytest.approx(1e-5 + 1.6e-3)
    assert c.d2h_s(1600) == pytest.approx(1e-5 + 0.8e-3)
    assert c.h2d_s(0) == 0.0


def test_invalid_coefficients_named() -> None:
    with pytest.raises(ValueError, match="prefill_s_per_token"):
        _cost(prefill_s_per_token=float("nan"))
    with pytest.raises(ValueError, match="h2d_bytes_per_s must be positive"):
        _cost(h2d_bytes_per_s=0)


def test_h100_preset_numbers() -> None:
    p = PRESETS.create("h100-llama8b")
    assert llama_kv_bytes_per_token(32, 8, 128, 2) == 131072
    assert p.cost.kv_bytes_per_token == 131072
    assert p.tokens_per_block == 16
    # Reloading a prefix over PCIe must be much cheaper than recomputing it.
    tokens = 4096
    assert p.cost.h2d_s(tokens * 131072) * 5 < p.cost.prefill_s(tokens, 0)


def test_vllm_cpu_preset_placeholder_and_calibration_file(tmp_path) -> None:
    missing = PRESETS.create("vllm-cpu", calibration=tmp_path / "none.json")
    assert missing.calibrated is False
    path = tmp_path / "vllm-cpu.json"
    data = _cost().to_dict() | {"tokens_per_block": 16, "_measured_by": "pbkv bench vllm"}
    path.write_text(json.dumps(data))
    preset = load_calibration(path)
    assert preset.calibrated is True
    assert preset.cost == _cost()
    path.write_text(json.dumps(data | {"prefil_s_per_token": 1.0}))
    with pytest.raises(ValueError, match="unknown cost-model field.*prefil_s_per_token"):
        load_calibration(path)


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ValueError, match="h100-llama8b, vllm-cpu"):
        PRESETS.create("a100")


def test_shipped_calibration_example_follows_the_schema() -> None:
    from pbkv.engine_adapter.sim.presets import CALIBRATION_DIR, VLLM_CPU_PLACEHOLDER

    preset = load_calibration(CALIBRATION_DIR / "vllm-cpu.example.json")
    assert preset.cost == CostModel(**VLLM_CPU_PLACEHOLDER)
    assert preset.tokens_per_block == 16
