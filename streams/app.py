"""The worker: a faust application that hosts the ingest loop and the API.

Faust provides the process: service lifecycle and signals, the worker command,
leader election among the workers of a group, and the leader-only timer that
sweeps time-driven membership changes. ``WorkerService`` owns the resources
(Redis, the producer, the batched consumer in ``streams.ingest``, the aiohttp
server of ``streams.http``) and starts and stops them in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import mode
from aiohttp import web

from segments.registry import Registry, RegistryCache
from signals import profile as profile_format
from signals.cache import ProfileCache
from signals.keys import Keys
from signals.redis_client import connect
from signals.store import Store
from signals.windows import US
from streams.clock import ClockSweeper
from streams.engine import Clock, Engine
from streams.http import Api
from streams.ingest import Ingest
from streams.kafka import Publisher, ensure_topics
from streams.logs import configure as configure_logging
from streams.metrics import Metrics
from streams.operations import SegmentOperations
from streams.retry import RetryPolicy
from streams.settings import ClockMode, Settings

logger = logging.getLogger(__name__)


class Components:
    """Everything a worker is made of, wired once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.retry = RetryPolicy()
        self.redis = connect(
            settings.redis_url.get_secret_value(),
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=15,
        )
        self.keys = Keys(settings.redis_prefix)
        self.store = Store(self.redis, self.keys)
        self.registry = Registry(self.redis, self.keys, settings.default_segment_limit)
        self.cache = RegistryCache(self.registry)
        self.publisher = Publisher(settings)
        self.clock = Clock(manual=settings.clock is ClockMode.MANUAL)
        self.metrics = Metrics()
        self.engine = Engine(
            self.store,
            self.cache,
            self.publisher,
            self.clock,
            dedup_horizon_us=int(settings.dedup_horizon_hours * 3600 * US),
            metrics=self.metrics,
            profiles=ProfileCache(settings.profile_cache_contacts),
            retry=self.retry,
        )
        self.ingest = Ingest(settings, self.engine, self.publisher, self.retry)
        self.sweeper = ClockSweeper(self.engine, self.store)
        self.ops = SegmentOperations(self.registry, self.store, self.engine)
        self.api = Api(settings, self.ops)
        self.api.ready = self.readiness
        self.metrics.refreshers += [self.ingest.refresh_lag, self._refresh_due]

    async def _refresh_due(self) -> None:
        due = await self.store.due_count(await self.engine.now_us())
        self.metrics.wakeups_due.set(due)

    async def readiness(self) -> dict[str, bool]:
        try:
            redis_ok = bool(await self.redis.ping())
        except Exception:
            redis_ok = False
        return {
            "redis": redis_ok,
            "kafka": self.ingest.running,
            "group_joined": self.ingest.joined,
        }


class WorkerService(mode.Service):
    """Starts the parts of a worker in dependency order, stops them in reverse."""

    components: Components

    async def on_start(self) -> None:
        c = self.components
        settings = c.settings
        # mode sets logging up when the worker starts; ours goes on top.
        configure_logging(settings.log_level, settings.log_json)
        await c.retry.call("loading Redis scripts", c.store.load_scripts)
        await c.retry.call("creating topics", lambda: ensure_topics(settings))
        await c.publisher.start()
        await c.ingest.start()
        self._runner = web.AppRunner(c.api.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.http_host, settings.http_port)
        await site.start()
        logger.info(
            "Worker started: HTTP on %s:%d, clock %s, topic prefix %r, "
            "stored profiles read by the %s reader",
            settings.http_host,
            settings.http_port,
            settings.clock.value,
            settings.topic_prefix,
            "Python" if profile_format.NATIVE is None else "compiled",
        )
        self.add_future(self._consume())

    async def _consume(self) -> None:
        try:
            await self.components.ingest.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("The ingest loop stopped; shutting the worker down")
            self._crash_later()

    def _crash_later(self) -> None:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.stop()))

    async def on_stop(self) -> None:
        c = self.components
        await c.ingest.stop()
        await self._runner.cleanup()
        await c.publisher.stop()
        await c.redis.aclose()
        logger.info("Worker stopped")


def _faust_credentials(settings: Settings) -> Any:
    """The same Kafka security for faust's own clients (leader election)."""
    options = settings.kafka_client_options()
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


def create_app(settings: Settings | None = None) -> tuple[Any, Components]:
    """The faust app of a worker and the components it runs."""
    settings = settings or Settings()
    components = Components(settings)
    app = faust.App(
        f"{settings.consumer_group}-control",
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=_faust_credentials(settings),
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka_session_timeout_seconds / 3,
        web_enabled=False,
        topic_disable_leader=False,
        topic_replication_factor=1,
        store="memory://",
    )

    class _Service(WorkerService):
        pass

    _Service.components = components
    app.service(_Service)

    @app.timer(interval=settings.clock_tick_seconds, on_leader=True)  # type: ignore[untyped-decorator]
    async def sweep_clock() -> None:
        try:
            await components.sweeper.sweep()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("Clock sweep failed, will retry: %s", exc)

    return app, components
