"""``GET /metrics``: Prometheus text for one app (``prometheus_client``, a registry per app, not the global one).

- ``unmask_requests_total{route, status}`` and ``unmask_request_latency_seconds{route}`` (a histogram, to the
  end of the body, so a stream counts whole), from a pure ASGI middleware; ``route`` is the matched route's
  template (``/v1/models/{model_id}``), or ``other`` for paths no route matches (a bounded label set).
- ``unmask_forward_passes_total`` (model calls; a batch's shared forwards count once),
  ``unmask_generated_tokens_total`` (masked positions filled for clients still waiting), read from the scheduler.
- ``unmask_queue_depth`` (jobs waiting for the worker) and ``unmask_active_requests`` (admitted requests).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class EngineCollector(Collector):
    """Counters and gauges read from the engine at scrape time (the worker thread only bumps plain ints)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        scheduler = self.engine.scheduler
        yield CounterMetricFamily("unmask_forward_passes", "Model forward passes run by the decode worker",
                                  value=scheduler.forwards_run)
        yield CounterMetricFamily("unmask_generated_tokens", "Masked positions filled by finished decodes",
                                  value=scheduler.tokens_decoded)
        yield GaugeMetricFamily("unmask_queue_depth", "Jobs waiting for the decode worker", value=scheduler.queued)
        yield GaugeMetricFamily("unmask_active_requests", "Requests admitted and not finished",
                                value=self.engine.limiter.active)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("unmask_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("unmask_request_latency_seconds", "HTTP request latency to the end of the body",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(EngineCollector(engine))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware: counts each HTTP request by route and status and times it to its last byte."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]  # 500 unless a response starts (a crash, a cancelled stream)

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")  # the router puts the matched route in scope
            self.metrics.observe(route, status[0], time.perf_counter() - start)
