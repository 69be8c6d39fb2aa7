import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pbkv.dashboard.http import DashboardServer, ThreadedDashboard
from pbkv.dashboard.metrics import PbkvMetrics


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


class Source:
    """A stats source whose counts grow on each call, and can be made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self) -> dict:
        if self.fail:
            raise RuntimeError("manager is gone")
        self.calls += 1
        n = self.calls
        return {
            "policy": "pbkv",
            "active_workflows": n,
            "hits": {"gpu_hits": n, "gpu_lookups": 4 * n},
            "hits_by_agent": {"coder": {"gpu_hits": 1, "gpu_lookups": 2}},
        }


@pytest.fixture
def served(tmp_path):
    source = Source()
    metrics = PbkvMetrics()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "policies.json").write_text(
        json.dumps(
            {
                "results": [
                    {"policy": "lru", "mean_latency_s": 2.0},
                    {"policy": "pbkv", "mean_latency_s": 1.0},
                ]
            }
        )
    )
    (tmp_path / "secret.json").write_text("{}")
    clock = iter(float(t) for t in range(1000))
    server = DashboardServer(
        source,
        "127.0.0.1",
        0,
        metrics,
        bench_dir=tmp_path / "bench",
        sample_interval_s=3600,
        clock=lambda: next(clock),
    )
    with ThreadedDashboard(server) as running:
        yield running, source, metrics


def test_page_assets_stats_and_metrics(served):
    running, source, metrics = served
    status, ctype, body = _get(running.url)
    assert status == 200 and ctype.startswith("text/html") and "/static/app.js" in body
    for asset in ("app.js", "app.css"):
        assert _get(running.url + "static/" + asset)[0] == 200
    metrics.observe_rpc("GetStats", "OK", 0.001)
    running.call(running.server.sample)  # second history point (the first is taken at start)
    status, ctype, body = _get(running.url + "api/stats")
    view = json.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    # start() sampled (call 1), sample() (call 2), this request refreshed (call 3)
    assert view["active_workflows"] == 3 and view["error"] is None
    assert view["overall"]["lookup_blocks"] == 12
    assert view["overall"]["gpu"] == {"hit_blocks": 3, "hit_rate": 0.25}
    assert view["agents"] == [
        {
            "name": "coder",
            "lookup_blocks": 2,
            "gpu": {"hit_blocks": 1, "hit_rate": 0.5},
            "cpu": {"hit_blocks": 0, "hit_rate": 0.0},
        }
    ]
    assert view["history"]["gpu"] == [0.25, 0.25] and len(view["history"]["t_s"]) == 2
    assert view["rpc"] == [
        {"method": "GetStats", "kind": "unary", "requests": 1, "errors": 0, "mean_latency_ms": 1.0}
    ]
    status, ctype, body = _get(running.url + "metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
        if not s.labels
    }
    assert samples["pbkv_active_workflows"] == 4  # each scrape reads the source afresh


def test_failing_source_keeps_the_last_snapshot_and_says_why(served):
    running, source, _ = served
    source.fail = True
    status, _, body = _get(running.url + "api/stats")
    view = json.loads(body)
    assert status == 200 and view["active_workflows"] == 1
    assert view["error"] == "stats source failed: RuntimeError: manager is gone"
    assert _get(running.url + "metrics")[0] == 200


def test_no_stats_yet_is_503(tmp_path):
    def broken() -> dict:
        raise RuntimeError("not ready")

    with ThreadedDashboard(DashboardServer(broken, port=0)) as running:
        status, _, body = _get(running.url + "api/stats")
    assert status == 503 and json.loads(body) == {
        "error": "stats source failed: RuntimeError: not ready"
    }


def test_bench_results_are_listed_and_rendered_but_nothing_outside(served):
    running, _, _ = served
    listing = json.loads(_get(running.url + "api/bench")[2])
    assert [f["name"] for f in listing["files"]] == ["policies.json"]
    status, _, body = _get(running.url + "api/bench/policies.json")
    assert status == 200 and json.loads(body)["results"][1]["policy"] == "pbkv"
    status, ctype, body = _get(running.url + "bench/policies.json")
    assert status == 200 and ctype.startswith("text/html") and "2.00×" in body
    for path in (
        "api/bench/..%2Fsecret.json",
        "api/bench/../secret.json",
        "bench/%2e%2e/secret.json",
        "api/bench/missing.json",
    ):
        assert _get(running.url + path)[0] == 404, path


def test_a_taken_port_is_a_clear_error(served):
    port = served[0].server.port
    second = ThreadedDashboard(DashboardServer(dict, port=port))
    with pytest.raises(OSError, match=rf"dashboard cannot listen on 127.0.0.1:{port}"):
        second.start()
    assert not second._thread.is_alive()  # its loop thread is gone too


def test_config_is_validated():
    with pytest.raises(ValueError, match="sample_interval_s must be > 0"):
        DashboardServer(dict, sample_interval_s=0)
    with pytest.raises(ValueError, match="port must be in"):
        DashboardServer(dict, port=70000)
