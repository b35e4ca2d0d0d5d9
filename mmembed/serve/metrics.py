"""``GET /metrics``: the service's counters in Prometheus' text format (``prometheus_client``).

Each app has its own registry (several apps may live in one process, e.g. in tests). What is
measured: requests by route template and status, their latency, the items of each encoder call,
the requests in the encoder path (queue depth), and how long the model (and index) took to load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmembed.errors import MissingDependencyError

#: Latency buckets, seconds: from a cached text embedding to a long batch of images.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The service's metrics in a registry of their own."""

    def __init__(self, in_flight: Callable[[], float]):
        try:
            import prometheus_client as prom
        except ImportError:
            raise MissingDependencyError("the /metrics route needs prometheus_client: pip install 'mmembed[serve]'"
                                         ) from None
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("mmembed_requests", "HTTP requests answered, by route template and status",
                                     ["method", "route", "status"], registry=self.registry)
        self.latency = prom.Histogram("mmembed_request_duration_seconds", "Time from a request's arrival to the "
                                      "end of its answer", ["route"], buckets=LATENCY_BUCKETS,
                                      registry=self.registry)
        self.batch_items = prom.Histogram("mmembed_batch_items", "Items encoded per encoder call (dynamic "
                                          "batching)", buckets=BATCH_BUCKETS, registry=self.registry)
        queue = prom.Gauge("mmembed_queue_depth", "Requests in the encoder path (running or waiting)",
                           registry=self.registry)
        queue.set_function(in_flight)
        self.load_seconds = prom.Gauge("mmembed_load_seconds", "Seconds the model (and index) took to load",
                                       registry=self.registry)
        self.ready = prom.Gauge("mmembed_ready", "1 once the model (and index) are loaded", registry=self.registry)

    def exposition(self) -> bytes:
        return self._prom.generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP answer by the route template it matched (not the raw path: candidate ids
    would make a label per candidate) and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = _route_of(scope)
            self.metrics.requests.labels(scope.get("method", ""), route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    return "/static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"
