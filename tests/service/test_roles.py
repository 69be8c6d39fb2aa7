"""Roles and tenant-scoped views (issue 13, item 4) against a real server in process: each
tenant has its own token mapped server side, GetStats/ListWorkflows show a tenant only its
own workflows, the operator sees all and alone may reload the model, engines may only
attach, and the dashboard takes the same auth on its own (loopback) bind host."""

from __future__ import annotations

import base64
import json
import queue
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.auth import parse_token_file
from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.service.server_thread import ServerThread
from pbkv.trace import Segment, Step, Workflow
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

Code = grpc.StatusCode
TOKEN_FILE = """
# pbkv tokens
{"token": "acme-t", "tenant": "acme"}
{"token": "globex-t", "tenant": "globex"}
{"token": "op-t", "role": "operator"}
{"token": "engine-t", "role": "engine"}
{"token": "dash-t", "role": "dashboard"}
"""
TRAIN = [
    Workflow(
        f"t{i}", "app", tuple(Step(a, (Segment(f"system:{a}", 32),), 8) for a in ["plan", "code"])
    )
    for i in range(3)
]


def config(tmp_path: Path, **kw) -> ServiceConfig:
    return ServiceConfig(
        **{
            "port": 0,
            "http_port": None,
            "watch_model_s": None,
            "store_path": tmp_path / "traces.sqlite3",
            "token_grants": parse_token_file(TOKEN_FILE),
            **kw,
        }
    )


def code_of(fn, *args, **kw) -> tuple[Code, str]:
    with pytest.raises(PbkvError) as info:
        fn(*args, **kw)
    return info.value.code, info.value.message


def test_the_token_file_maps_tokens_to_roles() -> None:
    assert parse_token_file("  s3cret \n") == (("s3cret", "operator", None),)  # compat
    assert parse_token_file(TOKEN_FILE) == (
        ("acme-t", "tenant", "acme"),
        ("globex-t", "tenant", "globex"),
        ("op-t", "operator", None),
        ("engine-t", "engine", None),
        ("dash-t", "dashboard", None),
    )
    for text, message in [
        ('{"token": "a", "role": "root"}', "line 1: unknown role 'root'"),
        ('{"token": "a", "tenant": "a/b"}', "line 1: tenant 'a/b' must match"),
        (
            '{"token": "a", "tenant": "x"}\n{"token": "a", "role": "engine"}',
            "the same token is given twice",
        ),
        ('{"token": "a", "tenant": "x"}\nbare', "line 2: not a JSON object"),
        ('{"token": "a", "role": "operator", "tenant": "x"}', "line 1: a tenant token"),
        ('{"token": "", "role": "engine"}', "a token must not be empty"),
        ('{"tenant": "x"}', "line 1: needs a string field 'token'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_token_file(text)


def run_workflow(client: PbkvClient, app: str, agent: str) -> None:
    client.start_workflow("w1", app)
    client.step_started("w1", agent)
    client.step_finished("w1", agent)


def test_tenants_see_only_their_own_workflows_and_the_operator_sees_all(tmp_path) -> None:
    model = save_model(PREDICTORS.create("markov1", workflows=TRAIN), tmp_path / "model")
    with (
        ServerThread(config(tmp_path, model_path=model)) as srv,
        PbkvClient(srv.target, token="acme-t") as acme,
        PbkvClient(srv.target, token="globex-t") as globex,
        PbkvClient(srv.target, token="op-t") as operator,
    ):
        run_workflow(acme, "acme-app", "acme-agent")
        run_workflow(globex, "globex-app", "globex-agent")
        assert acme.stats() == {
            "tenant": "acme",
            "active_workflows": 1,
            "apps": {"acme-app": 1},
            "agents": ["acme-agent"],
            "service": {"active_workflows": 1},
        }
        full = operator.stats()
        assert full["service"]["active_workflows"] == 2
        assert full["service"]["model_path"] == str(model)
        assert [(w.tenant, w.workflow_id) for w in acme.list_workflows()] == [("acme", "w1")]
        assert sorted((w.tenant, w.app) for w in operator.list_workflows()) == [
            ("acme", "acme-app"),
            ("globex", "globex-app"),
        ]
        with PbkvClient(srv.target, token="op-t", tenant="globex") as for_globex:
            assert [w.app for w in for_globex.list_workflows()] == ["globex-app"]
            for_globex.end_workflow("w1")  # the operator acts for any tenant
        # A tenant token cannot claim another tenant, by field or by metadata.
        assert code_of(acme.start_workflow, "w2", "app", tenant="globex") == (
            Code.PERMISSION_DENIED,
            "tenant 'globex': the token is for tenant 'acme'",
        )
        with PbkvClient(srv.target, token="acme-t", tenant="globex") as claim:
            assert code_of(claim.start_workflow, "w2", "app") == (
                Code.PERMISSION_DENIED,
                "x-pbkv-tenant 'globex': the token is for tenant 'acme'",
            )
            assert code_of(claim.list_workflows)[0] == Code.PERMISSION_DENIED
        assert code_of(acme.forecast, "w1", tenant="globex")[0] == Code.PERMISSION_DENIED


def test_a_tenant_token_cannot_claim_another_tenant_on_a_session(tmp_path) -> None:
    import asyncio

    from pbkv.service.client import AsyncPbkvClient

    async def run(target: str) -> tuple[int, PbkvError]:
        async with AsyncPbkvClient(target, token="acme-t") as client, client.session() as session:
            own = await session.start_workflow("w1", "app")
            with pytest.raises(PbkvError) as info:
                await session.start_workflow("w2", "app", tenant="globex")
            return own, info.value

    with ServerThread(config(tmp_path)) as srv:
        seq, error = asyncio.run(run(srv.target))
        tenants = srv.run(
            lambda: sorted(s.tenant for s in srv.server.servicer.manager.active_workflows())
        )
    assert seq == 1 and error.code == Code.PERMISSION_DENIED and tenants == ["acme"]


def attach_code(target: str, token: str) -> Code:
    """How an Attach with ``token`` ends (the hello is valid)."""
    out: queue.Queue = queue.Queue()
    out.put(
        pb.EngineMessage(hello=pb.AttachRequest(engine_id="e", gpu_blocks=8, tokens_per_block=16))
    )
    with grpc.insecure_channel(target) as channel:
        calls = pb_grpc.EngineLinkStub(channel).Attach(
            iter(out.get, None), timeout=10, metadata=(("authorization", f"Bearer {token}"),)
        )
        try:
            next(calls)
            return Code.OK
        except grpc.RpcError as exc:
            return exc.code()
        finally:
            out.put(None)


def test_each_role_calls_only_what_it_may(tmp_path) -> None:
    model = save_model(
        PREDICTORS.create("markov1", workflows=TRAIN), tmp_path / "model", {"version": "v1"}
    )
    with ServerThread(config(tmp_path, model_path=model)) as srv:
        denied = {}
        for token in ("acme-t", "engine-t", "dash-t", "op-t"):
            with PbkvClient(srv.target, token=token) as client:
                denied[token] = [
                    name
                    for name, call in [
                        ("start", lambda c=client: c.start_workflow("w", "app")),
                        ("stats", client.stats),
                        ("list", client.list_workflows),
                        ("reload", client.reload_model),
                    ]
                    if _denied(call)
                ]
        assert denied == {
            "acme-t": ["reload"],
            "engine-t": ["start", "stats", "list", "reload"],
            "dash-t": ["start", "reload"],
            "op-t": [],
        }
        with PbkvClient(srv.target, token="acme-t") as acme:
            assert code_of(acme.reload_model) == (
                Code.PERMISSION_DENIED,
                "a tenant token may not call ReloadModel (roles allowed: operator)",
            )
        assert [attach_code(srv.target, t) for t in ("acme-t", "dash-t", "engine-t", "op-t")] == [
            Code.PERMISSION_DENIED,
            Code.PERMISSION_DENIED,
            Code.OK,
            Code.OK,
        ]
        with EngineLinkClient(
            EngineLinkConfig(target=srv.target, engine_id="e1", gpu_blocks=8, token="engine-t")
        ) as link:
            assert link.wait_connected(10)
        with PbkvClient(srv.target, token="dash-t") as dash:
            assert dash.stats()["service"]["model_version"] == "v1"  # the full view


def _denied(call) -> bool:
    try:
        call()
    except PbkvError as exc:
        assert exc.code == Code.PERMISSION_DENIED, exc
        return True
    return False


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_dashboard_needs_an_operator_or_dashboard_token_and_binds_loopback(tmp_path) -> None:
    with ServerThread(config(tmp_path, host="localhost", http_port=0)) as srv:
        url = srv.server.http_url
        assert url.startswith("http://127.0.0.1:")  # not --host: its own flag, loopback
        for path in ("", "api/stats", "metrics", "static/app.js"):
            status, headers, _ = fetch(url + path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        for token in ("acme-t", "engine-t", "wrong"):
            assert fetch(url + "api/stats", {"Authorization": f"Bearer {token}"})[0] == 401
        status, _, body = fetch(url + "api/stats", {"Authorization": "Bearer op-t"})
        assert status == 200 and "error" in json.loads(body)
        basic = base64.b64encode(b"anyone:dash-t").decode()
        assert fetch(url + "metrics", {"Authorization": f"Basic {basic}"})[0] == 200
        # A browser: ?token= once sets a cookie and drops the token from the address.
        status, headers, _ = fetch(url + "?token=dash-t")
        assert status == 302 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie == "pbkv_token=dash-t" and "HttpOnly" in headers["Set-Cookie"]
        assert fetch(url + "api/stats", {"Cookie": cookie})[0] == 200
        assert fetch(url + "?token=acme-t")[0] == 401


def test_pbkv_serve_reads_a_token_file_of_roles_and_refuses_an_empty_one(tmp_path) -> None:
    import signal
    import subprocess

    from support import PBKV, ready_port, start_lines

    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    run = subprocess.run(
        [
            PBKV,
            "serve",
            "--port",
            "0",
            "--no-dashboard",
            "--token-file",
            str(empty),
            "--store-path",
            str(tmp_path / "e.sqlite3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (run.returncode, run.stderr) == (
        2,
        f"pbkv: error: --token-file {empty}: holds no token\n",
    )  # not: auth off
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(TOKEN_FILE)
    proc = subprocess.Popen(
        [
            PBKV,
            "serve",
            "--port",
            "0",
            "--http-port",
            "0",
            "--token-file",
            str(tokens),
            "--store-path",
            str(tmp_path / "s.sqlite3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = start_lines(proc)
        target = f"127.0.0.1:{ready_port(lines)}"
        [dashboard] = [line for line in lines if "dashboard" in line]
        assert dashboard.startswith("pbkv serve: dashboard http://127.0.0.1:")
        with PbkvClient(target, token="acme-t") as acme:
            assert acme.start_workflow("w1", "app") == 1
            assert acme.stats()["tenant"] == "acme"
        with PbkvClient(target) as anonymous:
            assert code_of(anonymous.stats)[0] == Code.UNAUTHENTICATED
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
