"""The engines' queues at scrape time: a Prometheus collector over the engine schedulers.

``pipeline.scheduler`` knows nothing of metrics (the pipeline imports nothing of the server),
so the server reads each scheduler's ``waiting``, ``in_use`` and ``capacity`` when ``/metrics``
is scraped: cheap attribute reads, and never a stale value. Refusals are counted as they
happen instead (``Metrics.watch_scheduler``): a counter read from schedulers would go down when
a retired release's scheduler went away.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.scheduler import EngineScheduler


class SchedulerCollector(Collector):
    """Each watched engine scheduler's queue, read at scrape time (schedulers of one backend
    name in several releases or tiers are summed: the labels are stage and backend)."""

    def __init__(self, schedulers: Iterable[EngineScheduler]) -> None:
        self._schedulers = schedulers

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(list(self._schedulers))

    @staticmethod
    def _families(schedulers: Iterable[EngineScheduler] = ()) -> list[Metric]:
        labels = ["stage", "backend"]
        depth = GaugeMetricFamily(
            "voxline_engine_queue_depth",
            "Calls waiting for a slot of the engine now.",
            labels=labels,
        )
        flight = GaugeMetricFamily(
            "voxline_engine_in_flight",
            "Calls the engine is serving now (slots taken).",
            labels=labels,
        )
        capacity = GaugeMetricFamily(
            "voxline_engine_capacity", "Calls the engine serves at once (its slots).", labels=labels
        )
        totals: dict[tuple[str, str], list[int]] = {}
        for scheduler in schedulers:
            sums = totals.setdefault((scheduler.stage, scheduler.name), [0, 0, 0])
            sums[0] += scheduler.waiting
            sums[1] += scheduler.in_use
            sums[2] += scheduler.capacity
        for key, (waiting, in_use, slots) in sorted(totals.items()):
            depth.add_metric(list(key), waiting)
            flight.add_metric(list(key), in_use)
            capacity.add_metric(list(key), slots)
        return [depth, flight, capacity]
