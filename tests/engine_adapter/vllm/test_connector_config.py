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


def test_service_access_reads_the_token_file_and_refuses_a_bad_one(tmp_path):
    token = tmp_path / "engine.token"
    token.write_text("77b1-engine\n")
    access = ConnectorConfig(link="service", service_token_file=str(token)).service_access()
    assert access == {"token": "77b1-engine", "tls_ca_file": None}
    assert ConnectorConfig(link="service").service_access() == {"token": None, "tls_ca_file": None}
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"'service_token_file': '.*empty.token' holds no token"):
        ConnectorConfig(service_token_file=str(empty)).service_access()
    with pytest.raises(ValueError, match=r"'service_token_file': cannot read '.*nope'"):
        ConnectorConfig(service_token_file=str(tmp_path / "nope")).service_access()
    with pytest.raises(ValueError, match=r"'service_tls_ca_file': no file '.*ca.pem'"):
        ConnectorConfig(service_tls_ca_file=str(tmp_path / "ca.pem")).service_access()
