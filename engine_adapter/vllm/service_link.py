"""``EngineLink`` over the pbkv service's gRPC Attach stream.

Wraps ``pbkv.service.engine_client.EngineLinkClient`` (background thread, bounded outbox that
drops oldest, latest-wins plan slot, reconnect with backoff). The client is created when the
connector binds the block pool, because the Attach hello carries the pool's size. After every
reconnect ``resync_needed`` turns true once so the connector can re-announce its cache (a
restarted service has forgotten it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pbkv.cache_manager.events import CachePlan, EngineEvent

log = logging.getLogger(__name__)


class ServiceLink:
    """``token``: the bearer token of a service with auth on (an ``engine`` or ``operator``
    role); ``tls_ca_file``: PEM roots, to connect with TLS."""

    def __init__(
        self,
        target: str,
        engine_id: str,
        max_plan_age_s: float | None = 30.0,
        *,
        token: str | None = None,
        tls_ca_file: Path | None = None,
    ) -> None:
        self.target = target
        self.engine_id = engine_id
        self.max_plan_age_s = max_plan_age_s
        self.token = token
        self.tls_ca_file = tls_ca_file
        self.client = None
        self._connects_seen = 0

    def attach(self, *, gpu_blocks: int, cpu_blocks: int, tokens_per_block: int) -> None:
        from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig

        self.client = EngineLinkClient(
            EngineLinkConfig(
                target=self.target,
                engine_id=self.engine_id,
                gpu_blocks=gpu_blocks,
                cpu_blocks=cpu_blocks,
                tokens_per_block=tokens_per_block,
                max_plan_age_s=self.max_plan_age_s,
                token=self.token,
                tls_ca_file=self.tls_ca_file,
            )
        )

    def send(self, event: EngineEvent) -> None:
        if self.client is not None:
            self.client.send(event)

    def latest_plan(self) -> CachePlan | None:
        if self.client is None:
            return None
        plan = self.client.latest_plan()
        if plan is None or plan.fallback_lru or plan.engine_id != self.engine_id:
            return None
        return plan

    def resync_needed(self) -> bool:
        if self.client is None:
            return False
        connects = self.client.stats().connects
        if connects != self._connects_seen:
            self._connects_seen = connects
            return True
        return False

    def close(self) -> None:
        if self.client is not None:
            self.client.close(timeout_s=2.0)
