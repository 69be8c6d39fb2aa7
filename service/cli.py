"""``pbkv serve`` and ``pbkv export-traces``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pbkv.service.config import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, LOOPBACK, ServiceConfig


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the pbkv gRPC service (and its dashboard)")
    _store_arguments(serve)
    serve.add_argument("--host", default=LOOPBACK, help="bind address (default: loopback)")
    serve.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port")
    serve.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                       help="dashboard port (0: any free port)")
    serve.add_argument("--no-dashboard", action="store_true", help="no HTTP server")
    serve.add_argument("--policy", default="pbkv", choices=_policy_names(), help="cache policy")
    serve.add_argument("--horizon", type=int, default=4, help="forecast horizon in steps")
    serve.add_argument("--model", type=Path, help="trained model directory (pbkv train --out)")
    serve.add_argument("--watch-model-s", type=float, default=2.0,
                       help="poll the model for a new version every N s (0: off; SIGHUP "
                            "always reloads)")
    serve.add_argument("--max-context-bytes", type=int, default=1024 * 1024,
                       help="cap on one call's context / output text and task")
    serve.add_argument("--max-pending-events", type=int, default=10_000,
                       help="events queued for the store before calls get RESOURCE_EXHAUSTED")
    serve.add_argument("--max-active-workflows", type=int, default=100_000,
                       help="workflows running at once before starts are refused")
    serve.add_argument("--recent-ended", type=int, default=100_000,
                       help="ended workflow ids remembered (late calls: FAILED_PRECONDITION)")
    serve.add_argument("--token-file", type=Path,
                       help="bearer tokens: one bare token (the operator's; or env PBKV_TOKEN) "
                            "or JSON lines {\"token\": ..., \"tenant\"|\"role\": ...} "
                            "(docs/service.md, security model)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--grace-s", type=float, default=5.0, help="SIGTERM drain time")
    serve.add_argument("--engine-grace-s", type=float, default=60.0,
                       help="release an engine this long after its Attach stream ended")
    serve.add_argument("--max-steps-per-workflow", type=int, default=100_000,
                       help="steps one workflow may report (FAILED_PRECONDITION beyond)")
    serve.add_argument("--log-level", default="INFO",
                       choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                       type=str.upper, help="logging level")
    serve.add_argument("--http-host", default=LOOPBACK,
                       help="dashboard bind address (default: loopback, whatever --host is)")
    serve.set_defaults(func=_serve)

    export = sub.add_parser("export-traces",
                            help="write the store's finished workflows as trace v1 JSONL")
    _store_arguments(export)
    export.add_argument("--out", type=Path, required=True, help="output .jsonl or .jsonl.gz")
    export.add_argument("--tenant", help="only this tenant's workflows")
    export.set_defaults(func=_export)


def _policy_names() -> list[str]:
    from pbkv.cache_manager.policies import POLICIES

    return POLICIES.names()


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    from pbkv.service.stores import STORES

    parser.add_argument("--store", default="sqlite", choices=STORES.names(), help="trace store")
    parser.add_argument("--store-path", type=Path, default=Path("pbkv-traces.sqlite3"),
                        help="SQLite file (store sqlite)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis server (store redis)")
    parser.add_argument("--redis-prefix", default="pbkv", help="Redis key prefix")


def _config(args: argparse.Namespace, **overrides) -> ServiceConfig:
    from pbkv.cli import CliError

    try:
        return ServiceConfig(store=args.store, store_path=args.store_path,
                             redis_url=args.redis_url, redis_prefix=args.redis_prefix,
                             **overrides)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _tokens(args: argparse.Namespace) -> dict:
    """``auth_token`` (the operator's) and ``token_grants`` from --token-file / PBKV_TOKEN."""
    from pbkv.cli import CliError
    from pbkv.service.auth import parse_token_file

    if args.token_file is None:
        return {"auth_token": os.environ.get("PBKV_TOKEN") or None}
    try:
        grants = parse_token_file(args.token_file.read_text())
    except OSError as exc:
        raise CliError(f"--token-file {args.token_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"--token-file {args.token_file}: {exc}") from None
    if not grants:
        raise CliError(f"--token-file {args.token_file}: holds no token")
    return {"auth_token": None, "token_grants": grants}


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from pbkv.cli import CliError
    from pbkv.service.server import serve_forever
    from pbkv.service.stores import StoreError

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                       ("--model", args.model)):
        if path is not None and not path.exists():
            raise CliError(f"{flag} {path}: no such file or directory")
    config = _config(
        args, host=args.host, port=args.port,
        http_port=None if args.no_dashboard else args.http_port, policy=args.policy,
        horizon=args.horizon, model_path=args.model,
        watch_model_s=args.watch_model_s or None, max_context_bytes=args.max_context_bytes,
        max_pending_events=args.max_pending_events,
        max_active_workflows=args.max_active_workflows, recent_ended=args.recent_ended,
        **_tokens(args), http_host=args.http_host,
        tls_cert_file=args.tls_cert, tls_key_file=args.tls_key, grace_s=args.grace_s,
        engine_grace_s=args.engine_grace_s, max_steps_per_workflow=args.max_steps_per_workflow)
    try:
        return asyncio.run(serve_forever(config, announce=lambda s: print(s, flush=True)))
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot serve on {config.target}: {exc}") from None


def _export(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError
    from pbkv.service.export import finished_workflows
    from pbkv.service.stores import StoreError, open_store
    from pbkv.training.trace_io import write_workflows

    config = _config(args)
    if config.store == "sqlite" and not config.store_path.exists():
        raise CliError(f"--store-path {config.store_path}: no such file")
    try:
        store = open_store(config)
    except (StoreError, ValueError) as exc:
        raise CliError(str(exc)) from None
    try:
        count = write_workflows(args.out, finished_workflows(store.events(),
                                                             tenant=args.tenant))
    finally:
        store.close()
    print(f"export-traces: {count} finished workflows from {store.describe()} -> {args.out}")
    return 0
