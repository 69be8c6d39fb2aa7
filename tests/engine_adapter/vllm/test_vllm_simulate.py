"""``python -m pbkv.bench.vllm_simulate``: the simulator with ``bench vllm``'s set-up (it
reads the connector's write-throughs per step, so it needs vLLM installed)."""

from __future__ import annotations

import re

from pbkv.bench.vllm_simulate import main


def test_it_reports_each_host_order_against_the_lru_tier(capsys, vllm_available) -> None:
    main(["--seeds", "0", "--num-workflows", "3", "--history-workflows", "10"])
    lines = capsys.readouterr().out.splitlines()
    m = re.fullmatch(
        r"seed 0: lru-offload\+host ([\d,]+), pbkv\+host \(chain\) ([\d,]+) = ([\d.]+), "
        r"pbkv\+host \(value\) ([\d,]+) = ([\d.]+)",
        lines[0],
    )
    assert m, lines[0]
    lru, chain, value = (int(m[i].replace(",", "")) for i in (1, 2, 4))
    assert lru > 0 and chain > 0 and value > 0
    assert float(m[3]) == round(lru / chain, 3) and float(m[5]) == round(lru / value, 3)
    assert lines[1:] == [
        f"LRU / pbkv+host (chain): median {lru / chain:.3f}",
        f"LRU / pbkv+host (value): median {lru / value:.3f}",
    ]
