import pytest

from pbkv.engine_adapter.vllm.selftest import (
    VllmIncompatible,
    check_block_pool,
    check_static,
    check_version,
)


def test_other_vllm_versions_are_refused_with_a_clear_message():
    expected = r"supports vLLM 0\.32\.\* only.*found vLLM 0\.33\.0"
    with pytest.raises(VllmIncompatible, match=expected):
        check_version("0.33.0")
    with pytest.raises(VllmIncompatible):
        check_version("0.3.2")
    assert check_version("0.32.1") == "0.32.1"


def test_installed_vllm_passes(vllm_available):
    assert "connector hooks" in check_static()


def test_live_pool_round_trip(make_pool):
    pool = make_pool(6, [b"\x01" * 32])
    check_block_pool(pool)


def test_pool_without_prefix_caching_is_refused(vllm_available):
    from vllm.v1.core.block_pool import BlockPool

    with pytest.raises(VllmIncompatible, match="prefix caching"):
        check_block_pool(BlockPool(num_gpu_blocks=4, enable_caching=False, hash_block_size=4))
