"""Prometheus metrics of one log instance, in a registry of its own (so two apps in one
process, as in tests, never share counters). Imports prometheus_client only."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.submissions = Counter(
            "meterlog_submissions_total",
            "Submitted receipts by outcome (logged, duplicate, conflict, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.pool_size = Gauge(
            "meterlog_pool_entries", "Entries waiting for the next seal.", registry=self.registry
        )
        self.sequencing_seconds = Histogram(
            "meterlog_sequencing_seconds",
            "Time to sequence one sealed pool: one transaction, from lock to commit.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.tree_size = Gauge(
            "meterlog_tree_size", "Entries in the latest checkpoint.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
