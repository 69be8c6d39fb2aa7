"""``pbkv serve`` and ``pbkv export-traces``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pbkv.service.config import ServiceConfig


def _default(name: str) -> object:
    """``ServiceConfig``'s default for ``name`` (the one place it is set)."""
    return ServiceConfig.__dataclass_fields__[name].default


def _manager_default(name: str) -> object:
    from pbkv.cache_manager.config import ManagerConfig

    return ManagerConfig.__dataclass_fields__[name].default


# Flags that set one ServiceConfig field: (flag, type, field, help); the help gets the field's
# default. A flag left out keeps the --config file's value, else that default.
_SERVE_FLAGS: tuple[tuple[str, type, str, str], ...] = (
    ("--host", str, "host", "bind address (loopback unless you expose it)"),
    ("--port", int, "port", "gRPC port"),
    ("--http-port", int, "http_port", "dashboard port (0: any free port)"),
    ("--http-host", str, "http_host", "dashboard bind address (apart from --host)"),
    ("--model", Path, "model_path", "trained model directory (pbkv train --out)"),
    (
        "--watch-model-s",
        float,
        "watch_model_s",
        "poll the model for a new version every N s (0: off; SIGHUP always reloads)",
    ),
    (
        "--max-context-bytes",
        int,
        "max_context_bytes",
        "cap on one call's context / output text and task",
    ),
    (
        "--max-pending-events",
        int,
        "max_pending_events",
        "events queued for the store before calls get RESOURCE_EXHAUSTED",
    ),
    (
        "--max-active-workflows",
        int,
        "max_active_workflows",
        "workflows running at once before starts are refused",
    ),
    (
        "--recent-ended",
        int,
        "recent_ended",
        "ended workflow ids remembered (late calls: FAILED_PRECONDITION)",
    ),
    (
        "--shadow",
        str,
        "shadow_endpoint",
        "shadow mode: a stock vLLM's KV-event ZMQ address (tcp://HOST:PORT); docs/deploy.md",
    ),
    (
        "--shadow-replay",
        str,
        "shadow_replay_endpoint",
        "shadow mode: the publisher's replay address (refills sequence gaps)",
    ),
    ("--shadow-topic", str, "shadow_topic", "shadow mode: the publisher's topic"),
    (
        "--shadow-gpu-blocks",
        int,
        "shadow_gpu_blocks",
        "shadow mode: the stock engine's GPU KV blocks (needed with --shadow)",
    ),
    (
        "--shadow-block-size",
        int,
        "shadow_tokens_per_block",
        "shadow mode: the stock engine's block size in tokens",
    ),
    ("--tls-cert", Path, "tls_cert_file", "PEM certificate chain (enables TLS)"),
    ("--tls-key", Path, "tls_key_file", "PEM private key"),
    ("--grace-s", float, "grace_s", "SIGTERM drain time"),
    (
        "--engine-grace-s",
        float,
        "engine_grace_s",
        "release an engine this long after its Attach stream ended",
    ),
    ("--cluster", str, "cluster_url", "run as a replica of the cluster on this Redis URL"),
    ("--cluster-prefix", str, "cluster_prefix", "key prefix of the cluster"),
    ("--cluster-partitions", int, "cluster_partitions", "workflow partitions (cluster)"),
    (
        "--cluster-engine-partitions",
        int,
        "cluster_engine_partitions",
        "engine partitions (cluster)",
    ),
    ("--cluster-lease-s", float, "cluster_lease_s", "partition lease length (cluster)"),
    (
        "--cluster-advertise",
        str,
        "cluster_advertise",
        "HOST:PORT other replicas dial to reach this one (default: --host:--port)",
    ),
    (
        "--cluster-wait-replicas",
        int,
        "cluster_wait_replicas",
        "WAIT until this many Redis replicas have each append (cluster; fewer: UNAVAILABLE)",
    ),
    (
        "--cluster-wait-timeout-ms",
        int,
        "cluster_wait_timeout_ms",
        "how long an append waits for --cluster-wait-replicas (cluster)",
    ),
    (
        "--max-steps-per-workflow",
        int,
        "max_steps_per_workflow",
        "steps one workflow may report (FAILED_PRECONDITION beyond)",
    ),
    ("--otlp-port", int, "otlp_port", "also accept OTLP traces on this port (enables --otlp)"),
)
_STORE_FLAGS: tuple[tuple[str, type, str, str], ...] = (
    ("--store-path", Path, "store_path", "SQLite file (store sqlite)"),
    ("--redis-url", str, "redis_url", "Redis server (store redis)"),
    ("--redis-prefix", str, "redis_prefix", "Redis key prefix"),
)


def _add_flags(
    parser: argparse.ArgumentParser, flags: tuple[tuple[str, type, str, str], ...]
) -> None:
    for flag, kind, name, text in flags:
        default = _default(name)
        parser.add_argument(
            flag,
            type=kind,
            dest=name,
            metavar=flag[2:].upper(),
            help=text if default is None else f"{text} (default: {default})",
        )


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the pbkv gRPC service (and its dashboard)",
        description="Every knob is in the --config file (TOML, docs/service.md); the flags "
        "below override it.",
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file of [service] and [manager.*] knobs"
    )
    serve.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config (file + flags) as TOML and exit",
    )
    _store_arguments(serve)
    _add_flags(serve, _SERVE_FLAGS)
    serve.add_argument("--no-dashboard", action="store_true", help="no HTTP server")
    serve.add_argument(
        "--otlp",
        action="store_true",
        help="accept OpenTelemetry traces (OTLP TraceService/Export) on the gRPC port "
        "(docs/otel.md; needs pbkv[otel])",
    )
    serve.add_argument(
        "--policy",
        choices=_policy_names(),
        help=f"cache policy (default: {_manager_default('policy')})",
    )
    serve.add_argument(
        "--horizon",
        type=int,
        help=f"forecast horizon in steps (default: {_manager_default('horizon')})",
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        help="bearer tokens: one bare token (the operator's; or env PBKV_TOKEN) "
        'or JSON lines {"token": ..., "tenant"|"role": ...} '
        "(docs/service.md, security model)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        type=str.upper,
        help="logging level",
    )
    serve.set_defaults(func=_serve)

    export = sub.add_parser(
        "export-traces", help="write the store's finished workflows as trace v1 JSONL"
    )
    _store_arguments(export)
    export.add_argument("--out", type=Path, required=True, help="output .jsonl or .jsonl.gz")
    export.add_argument("--tenant", help="only this tenant's workflows")
    export.set_defaults(func=_export)


def _policy_names() -> list[str]:
    from pbkv.cache_manager.policies import POLICIES

    return POLICIES.names()


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    from pbkv.service.stores import STORES

    parser.add_argument(
        "--store", choices=STORES.names(), help=f"trace store (default: {_default('store')})"
    )
    _add_flags(parser, _STORE_FLAGS)


def _config(args: argparse.Namespace, **overrides) -> ServiceConfig:
    """The file's config (``--config``, if the command has it) with every flag that was given
    on top, then ``overrides``."""
    from pbkv.cli import CliError
    from pbkv.service.config_file import build, read_tree

    path = getattr(args, "config", None)
    tree = read_tree(path) if path is not None else {}
    manager = {k: v for k in ("policy", "horizon") if (v := getattr(args, k, None)) is not None}
    if manager:
        section = tree.setdefault("manager", {})
        if isinstance(section, dict):
            section.update(manager)
    names = ["store", *(name for _, _, name, _ in (*_SERVE_FLAGS, *_STORE_FLAGS))]
    flags = {name: value for name in names if (value := getattr(args, name, None)) is not None}
    try:
        return build(tree, **{**flags, **overrides})
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
    from pbkv.service.addons import configured_addons
    from pbkv.service.server import serve_forever
    from pbkv.service.stores import StoreError

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, object] = {**_tokens(args)}
    if args.no_dashboard:
        overrides["http_port"] = None
    if args.otlp:
        overrides["otlp"] = True
    if args.watch_model_s == 0:
        overrides["watch_model_s"] = None
    config = _config(args, **overrides)
    if args.print_config:
        from pbkv.service.config_file import to_toml

        print(to_toml(config), end="")
        return 0
    for flag, path in (
        ("--tls-cert", config.tls_cert_file),
        ("--tls-key", config.tls_key_file),
        ("--model", config.model_path),
    ):
        if path is not None and not path.exists():
            raise CliError(f"{flag} {path}: no such file or directory")
    if config.otlp_enabled:
        from pbkv.service.otlp import import_trace_service

        import_trace_service()  # a UserError naming the extra to install
    addons = configured_addons(config)
    try:
        return asyncio.run(
            serve_forever(config, announce=lambda s: print(s, flush=True), addons=addons)
        )
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
        count = write_workflows(args.out, finished_workflows(store.events(), tenant=args.tenant))
    finally:
        store.close()
    print(f"export-traces: {count} finished workflows from {store.describe()} -> {args.out}")
    return 0
