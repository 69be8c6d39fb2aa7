"""``pbkv serve --cluster`` and ``pbkv cluster status``: bad input is one error line."""

from __future__ import annotations

import json

import pytest
from cli_run import pbkv


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["serve", "--cluster", "foo", "--no-dashboard"],
            "pbkv: error: [service] cluster_url must be redis://HOST:PORT[/db] or "
            "redis+cluster://HOST:PORT, got 'foo'\n",
        ),
        (
            ["serve", "--cluster", "redis://127.0.0.1:6379/0", "--cluster-lease-s", "0.1"],
            "pbkv: error: [service] cluster_lease_s must be in [0.3, 600], got 0.1\n",
        ),
        (
            ["cluster", "status", "--cluster", "foo"],
            "pbkv: error: --cluster foo: Redis URL must specify one of the following schemes "
            "(redis://, rediss://, unix://)\n",
        ),
        (  # nothing listens on 7159 (this area's Redis Cluster ports are 7140-7151)
            ["cluster", "status", "--cluster", "redis+cluster://127.0.0.1:7159"],
            "pbkv: error: --cluster redis+cluster://127.0.0.1:7159: Redis Cluster cannot be "
            "connected. Please provide at least one reachable node: Error 111 connecting to "
            "127.0.0.1:7159. Connection refused.\n",
        ),
        (
            [
                "serve",
                "--cluster",
                "redis+cluster://127.0.0.1:7159",
                "--no-dashboard",
                "--port",
                "50339",
            ],
            "pbkv: error: cluster redis+cluster://127.0.0.1:7159: Redis Cluster cannot be "
            "connected. Please provide at least one reachable node: Error 111 connecting to "
            "127.0.0.1:7159. Connection refused.\n",
        ),
        (
            [
                "cluster",
                "status",
                "--cluster",
                "redis://127.0.0.1:6379/0",
                "--cluster-prefix",
                "a b",
            ],
            "pbkv: error: cluster prefix 'a b' must be non-empty, no spaces or {}\n",
        ),
    ],
)
def test_bad_cluster_input_is_one_line(argv, error) -> None:
    done = pbkv(*argv, timeout_s=60)
    assert (done.returncode, done.stderr) == (2, error)


def test_status_of_an_empty_cluster(redis_url, prefix) -> None:
    done = pbkv("cluster", "status", "--cluster", redis_url, "--cluster-prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert (status["live_replicas"], status["events_logged"], status["unowned"]) == (
        0,
        0,
        {"p": 16, "e": 8},
    )
