"""The token approximation's rules (``training/tokens.py``; its calibration against real
counts is measured in test_chatdev_import.py)."""

from __future__ import annotations

from pbkv.training.tokens import approx_tokens


def test_approx_tokens_rules():
    assert approx_tokens("") == 0
    assert approx_tokens("hello world") == 2
    assert approx_tokens("internationalization") == 4  # 20 letters -> ceil(20 / 5)
    assert approx_tokens("1234567") == 3
    assert approx_tokens("a -> b") == 3
    assert approx_tokens("数据") == 2
