"""The service's one configuration object, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pbkv.cache_manager.config import ManagerConfig
from pbkv.training.genai_spans import SpanLimits

DEFAULT_GRPC_PORT = 50151
DEFAULT_HTTP_PORT = 8377
LOOPBACK = "127.0.0.1"
# Bounds of a store's WAIT after appends (the Redis store's URL options, cluster_wait_*).
MAX_WAIT_MS = 60_000
MAX_WAIT_REPLICAS = 16


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    host: str = LOOPBACK  # loopback by default: exposing it is a choice
    port: int = DEFAULT_GRPC_PORT  # 0: pick a free port (tests)
    http_port: int | None = DEFAULT_HTTP_PORT  # dashboard; None: no HTTP server
    store: str = "sqlite"  # a name in pbkv.service.stores.STORES
    store_path: Path = Path("pbkv-traces.sqlite3")  # store sqlite: the file
    redis_url: str = "redis://127.0.0.1:6379/0"  # store redis: the server
    redis_prefix: str = "pbkv"  # store redis: key prefix
    model_path: Path | None = None  # trained predictor artifact (pbkv train --out)
    watch_model_s: float | None = 2.0  # poll the artifact for a new version; None: off
    max_context_bytes: int = 1024 * 1024  # cap on context_text / output_text / task
    max_name_bytes: int = 256  # cap on ids, app, agent, tenant names
    max_pending_events: int = 10_000  # recorder queue; beyond it RESOURCE_EXHAUSTED
    max_active_workflows: int = 100_000  # running at once; beyond it starts are refused
    max_concurrent_rpcs: int = 10_000  # gRPC answers RESOURCE_EXHAUSTED beyond it
    max_events_per_message: int = 4_096  # EngineLink batch cap
    max_session_events: int = 1_024  # events in one Session request
    max_prompt_segments: int = 4_096  # StepFinished.prompt segments
    max_blocks_per_event: int = 16_384  # block hashes in one engine event
    max_block_hash_bytes: int = 128  # bytes of one block hash (vLLM's are 32)
    max_message_bytes: int = 8 * 1024 * 1024  # gRPC receive limit per message
    max_steps_per_workflow: int = 100_000  # finished steps; beyond it FAILED_PRECONDITION
    engine_grace_s: float = 60.0  # an engine whose stream ended is released after it
    plan_min_interval_s: float = 0.005  # an engine stream replans at most this often
    plan_refresh_s: float = 10.0  # an unchanged plan is repeated this often (engines' staleness)
    auth_token: str | None = None  # bearer token required on every call when set
    tls_cert_file: Path | None = None  # PEM server certificate chain
    tls_key_file: Path | None = None  # PEM private key
    grace_s: float = 5.0  # SIGTERM: finish in-flight calls for this long
    recent_ended: int = 100_000  # ended ids remembered for FAILED_PRECONDITION
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    # The cache manager's own config (policy, horizon, per-component sections); its
    # ended_memory is taken from recent_ended.
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    http_host: str = LOOPBACK  # the dashboard's bind address (apart from gRPC's)
    # (token, role, tenant) besides auth_token (the operator's): service/auth.py, roles
    token_grants: tuple[tuple[str, str, str | None], ...] = field(default=(), repr=False)
    otlp: bool = False  # accept OTLP traces (TraceService/Export) on the gRPC port
    otlp_port: int | None = None  # also serve OTLP on a port of its own (enables otlp)
    # Caps and timers of OTLP span ingestion ([service.otlp_limits]; docs/otel.md).
    otlp_limits: SpanLimits = field(default_factory=SpanLimits)
    # Shadow mode (docs/deploy.md): estimate pbkv's savings from a stock engine's KV events.
    shadow_endpoint: str | None = None  # stock vLLM's KV-event ZMQ address; None: no shadow
    shadow_replay_endpoint: str | None = None  # its replay ROUTER socket, to refill gaps
    shadow_topic: str = ""  # the publisher's topic (vLLM kv-events-config "topic")
    shadow_gpu_blocks: int = 0  # the stock engine's GPU KV blocks (needed with a shadow)
    shadow_tokens_per_block: int = 16  # the stock engine's block size (vLLM --block-size)
    shadow_engine_id: str = "shadow"  # the shadow engine's name in the manager and stats
    shadow_cost_model: str = "vllm-cpu"  # simulator preset the latency estimate uses
    shadow_report_mode: str = "full"  # requests' kv_cache_report_mode: full|incremental
    # Cluster mode (docs/cluster.md): replicas on one Redis form one service; None: alone.
    cluster_url: str | None = None  # redis://HOST:PORT[/db] or redis+cluster://HOST:PORT
    cluster_prefix: str = "pbkv"  # key prefix of the cluster's keys
    cluster_partitions: int = 16  # workflow partitions (fixed for the cluster's life)
    cluster_engine_partitions: int = 8  # engine partitions
    cluster_lease_s: float = 3.0  # partition lease; renewed every third of it
    cluster_advertise: str | None = None  # address other replicas dial; None: host:port
    cluster_wait_replicas: int = 0  # Redis replicas each append must reach (WAIT); 0: no WAIT
    cluster_wait_timeout_ms: int = 1_000  # WAIT's limit; fewer replicas by then: UNAVAILABLE

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")
        for name in (
            "max_context_bytes",
            "max_name_bytes",
            "max_pending_events",
            "max_active_workflows",
            "max_concurrent_rpcs",
            "max_events_per_message",
            "max_session_events",
            "max_prompt_segments",
            "max_blocks_per_event",
            "max_block_hash_bytes",
            "max_message_bytes",
            "max_steps_per_workflow",
            "recent_ended",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.watch_model_s is not None and not self.watch_model_s > 0:
            raise ValueError(f"watch_model_s must be > 0 or None, got {self.watch_model_s}")
        for name in ("grace_s", "engine_grace_s", "plan_min_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.auth_token is not None and not self.auth_token:
            raise ValueError("auth_token must not be empty (use None to disable)")
        if not isinstance(self.manager, ManagerConfig):
            raise ValueError(f"manager must be a ManagerConfig, got {self.manager!r}")
        if self.otlp_port is not None and not 0 <= self.otlp_port <= 65535:
            raise ValueError(f"otlp_port must be in [0, 65535], got {self.otlp_port}")
        if not isinstance(self.otlp_limits, SpanLimits):
            raise ValueError(f"otlp_limits must be a SpanLimits, got {self.otlp_limits!r}")
        if not (math.isfinite(self.plan_refresh_s) and self.plan_refresh_s > 0):
            raise ValueError(f"plan_refresh_s must be > 0, got {self.plan_refresh_s}")
        if not (math.isfinite(self.cluster_lease_s) and 0.3 <= self.cluster_lease_s <= 600):
            raise ValueError(f"cluster_lease_s must be in [0.3, 600], got {self.cluster_lease_s}")
        if not 0 <= self.cluster_wait_replicas <= MAX_WAIT_REPLICAS:
            raise ValueError(
                f"cluster_wait_replicas must be in [0, {MAX_WAIT_REPLICAS}], "
                f"got {self.cluster_wait_replicas}"
            )
        if not 1 <= self.cluster_wait_timeout_ms <= MAX_WAIT_MS:
            raise ValueError(
                f"cluster_wait_timeout_ms must be in [1, {MAX_WAIT_MS}], "
                f"got {self.cluster_wait_timeout_ms}"
            )
        if self.cluster_url is not None and not self.cluster_url.startswith(
            ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        ):
            raise ValueError(
                "cluster_url must be redis://HOST:PORT[/db] or redis+cluster://HOST:PORT, "
                f"got {self.cluster_url!r}"
            )
        if not self.http_host:
            raise ValueError("http_host must not be empty")
        if self.shadow_endpoint is not None:
            for name in ("shadow_endpoint", "shadow_replay_endpoint"):
                value = getattr(self, name)
                if value is not None and "://" not in value:
                    raise ValueError(f"{name} {value!r} is not a ZMQ address (tcp://HOST:PORT)")
            if self.shadow_gpu_blocks <= 0:
                raise ValueError(
                    "shadow_gpu_blocks must be the stock engine's GPU KV blocks (> 0) when "
                    "shadow_endpoint is set (vLLM logs them as 'GPU KV cache size' / block size)"
                )
            if self.shadow_tokens_per_block <= 0:
                raise ValueError(
                    f"shadow_tokens_per_block must be > 0, got {self.shadow_tokens_per_block}"
                )
            if self.shadow_report_mode not in ("incremental", "full"):
                raise ValueError(
                    f"shadow_report_mode must be incremental or full, got "
                    f"{self.shadow_report_mode!r}"
                )
            if not self.shadow_engine_id:
                raise ValueError("shadow_engine_id must not be empty")

    @property
    def otlp_enabled(self) -> bool:
        return self.otlp or self.otlp_port is not None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"
