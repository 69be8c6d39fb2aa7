"""Shadow mode inside ``pbkv serve``: the subscriber thread decodes, the service's event loop
replays (the manager is not thread-safe and the servicers drive it from that loop), and the
estimate goes into the stats dict the dashboard and ``/metrics`` read (``shadow``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pbkv.engine_adapter.shadow.replay import ShadowReplay
from pbkv.engine_adapter.shadow.subscriber import KvEventSubscriber, SubscriberConfig
from pbkv.engine_adapter.shadow.wire import WireLimits
from pbkv.engine_adapter.sim.presets import PRESETS
from pbkv.service.config import ServiceConfig
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
PUMP_S = 0.05  # how often the loop drains the subscriber
MAX_BATCHES_PER_PUMP = 256  # so one pump never holds the loop long


class ShadowAddon:
    def __init__(self, config: ServiceConfig) -> None:
        assert config.shadow_endpoint is not None
        self.config = config
        self.cost = PRESETS.create(config.shadow_cost_model).cost
        self.subscriber = KvEventSubscriber(
            SubscriberConfig(
                config.shadow_endpoint,
                config.shadow_replay_endpoint,
                config.shadow_topic,
                WireLimits(
                    max_events_per_batch=config.max_events_per_message,
                    max_blocks_per_event=config.max_blocks_per_event,
                    max_block_hash_bytes=config.max_block_hash_bytes,
                ),
            )
        )
        self.replay: ShadowReplay | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = ThrottledLog(log, "pbkv shadow replay")

    def describe(self) -> str:
        c = self.config
        return (
            f"shadow of {c.shadow_endpoint} as engine {c.shadow_engine_id!r} "
            f"({c.shadow_gpu_blocks} GPU blocks x {c.shadow_tokens_per_block} tokens; "
            f"nothing applied, estimates only)"
        )

    async def start(self, server: Any) -> None:
        c = self.config
        servicer = server.servicer
        self.replay = ShadowReplay(
            servicer.manager,
            c.shadow_engine_id,
            gpu_blocks=c.shadow_gpu_blocks,
            tokens_per_block=c.shadow_tokens_per_block,
            cost=self.cost,
            clock=time.monotonic,
            report_mode=c.shadow_report_mode,
        )
        await asyncio.to_thread(self.subscriber.start)
        self._publish(servicer)
        self._task = asyncio.get_running_loop().create_task(self._pump(servicer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.subscriber.stop)

    async def _pump(self, servicer: Any) -> None:
        assert self.replay is not None
        while True:
            await asyncio.sleep(PUMP_S)
            batches = self.subscriber.drain(MAX_BATCHES_PER_PUMP)
            for batch in batches:
                try:
                    self.replay.on_batch(batch)
                except ValueError as exc:  # e.g. a block size that is not the configured one
                    self._failures.failed(f"batch {batch.seq}", exc)
            if batches:
                self._publish(servicer)

    def _publish(self, servicer: Any) -> None:
        assert self.replay is not None
        figures = self.replay.estimate()
        counts = dict(self.subscriber.counts)
        figures["lost_batches"] = counts["lost_batches"] + counts["dropped_batches"]
        figures["subscriber"] = counts
        figures["replay_failures"] = self._failures.num_failures
        servicer.extra_stats["shadow"] = figures
