import pytest

from pbkv.engine_adapter.vllm.connector import ConnectorConfig


def test_defaults_and_extra_config():
    cfg = ConnectorConfig.from_extra({"engine_id": "e1", "host_tier_blocks": 8})
    assert (cfg.engine_id, cfg.link, cfg.host_tier_blocks) == ("e1", "in-process", 8)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"link": "carrier-pigeon"}, "'link' must be one of"),
        ({"host_tier_blocks": -1}, "host_tier_blocks"),
        ({"engine_id": ""}, "engine_id"),
        ({"bogus": 1}, r"unknown keys \['bogus'\]"),
    ],
)
def test_bad_extra_config_names_the_key(extra, match):
    with pytest.raises(ValueError, match=match):
        ConnectorConfig.from_extra(extra)
