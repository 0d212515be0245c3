"""The backend's Prometheus metrics: the ingest's counters, read at scrape time (no second bookkeeping)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from backend.ingest.consumer import Ingest
    from backend.ingest.workers import IngestWorkers

# (metric name without the _total suffix, IngestCounters field, help text)
_TOTALS = (
    ("bikeguard_ingest_messages", "messages", "Station messages taken from the broker and settled"),
    ("bikeguard_ingest_sightings_stored", "sightings", "Sightings stored (new batches only)"),
    ("bikeguard_ingest_batches_new", "batches_new", "Sightings batches stored for the first time"),
    ("bikeguard_ingest_batches_repeated", "batches_repeated", "Sightings batches received again (a resend)"),
    ("bikeguard_ingest_batches_conflicting", "batches_conflicting", "Batches reusing a stored batch_seq"),
    ("bikeguard_ingest_alerts", "alerts", "Alerts stored"),
    ("bikeguard_ingest_statuses", "statuses", "Station statuses stored"),
    ("bikeguard_ingest_flushes", "flushes", "Transactions written"),
    ("bikeguard_ingest_db_retries", "db_retries", "Flushes retried because the database was unavailable"),
    ("bikeguard_ingest_confirmations_sent", "confirmations", "Confirmation messages published to stations"),
    ("bikeguard_ingest_batches_confirmed", "batches_confirmed", "Batches confirmed to their stations"),
)


class IngestCollector(Collector):
    """The ingest's counters and lane depths as Prometheus metrics, read whenever /metrics is scraped."""

    def __init__(self, ingest: Ingest | IngestWorkers) -> None:
        self.ingest = ingest

    def collect(self) -> Iterator[Metric]:
        """One family per counter, the per-station and per-kind ones labelled."""
        c = self.ingest.counters
        for name, attr, text in _TOTALS:
            yield CounterMetricFamily(name, text, value=getattr(c, attr))
        rejected = CounterMetricFamily(
            "bikeguard_ingest_rejected", "Messages refused and kept in rejected_messages, by kind", labels=["kind"]
        )
        for kind, n in sorted(c.rejected.items()):
            rejected.add_metric([kind], n)
        yield rejected
        confirmed = CounterMetricFamily(
            "bikeguard_ingest_station_batches_confirmed", "Batches stored and confirmed, by station", labels=["station"]
        )
        for station, n in sorted(c.batches_confirmed_by_station.items()):
            confirmed.add_metric([station], n)
        yield confirmed
        conflicts = CounterMetricFamily(
            "bikeguard_ingest_station_conflicts", "Batches reusing a stored batch_seq, by station", labels=["station"]
        )
        for station, n in sorted(c.conflicts_by_station.items()):
            conflicts.add_metric([station], n)
        yield conflicts
        queued = GaugeMetricFamily("bikeguard_ingest_queued", "Messages waiting in the ingest's lanes", labels=["lane"])
        for lane, n in self.ingest.queued().items():
            queued.add_metric([lane], n)
        yield queued
        yield from _gap_metrics(self.ingest)
        yield GaugeMetricFamily(
            "bikeguard_ingest_broker_connected", "1 if the broker is connected", value=int(self.ingest.broker_connected)
        )


def _gap_metrics(ingest: Ingest | IngestWorkers) -> Iterator[Metric]:
    """Missing batch_seqs (backend.ingest.gaps): seen, recovered and lost, in all and by station; missing now."""
    g = ingest.gap_counters
    yield CounterMetricFamily(
        "bikeguard_ingest_gaps_seen", "Gaps in stations' batch_seqs open past the grace period", value=g.gaps_seen
    )
    yield CounterMetricFamily(
        "bikeguard_ingest_batch_requests", "Requests for missing batches sent to stations", value=g.batch_requests
    )
    per_station = (
        ("bikeguard_ingest_station_gaps_seen", "Gaps open past the grace period and asked for", g.gaps_by_station),
        (
            "bikeguard_ingest_station_batches_recovered",
            "Missing batches that came once asked for",
            g.recovered_by_station,
        ),
        ("bikeguard_ingest_station_batches_lost", "Missing batches their station no longer holds", g.lost_by_station),
        (
            "bikeguard_ingest_station_gaps_not_issued",
            "Gaps closed as never issued by the station's spool (replaced: what the old one had not sent is lost)",
            g.not_issued_by_station,
        ),
    )
    for name, text, counts in per_station:
        family = CounterMetricFamily(name, f"{text}, by station", labels=["station"])
        for station, n in sorted(counts.items()):
            family.add_metric([station], n)
        yield family
    lost = CounterMetricFamily(
        "bikeguard_ingest_batches_lost", "Missing batches their station no longer holds, by reason", labels=["reason"]
    )
    for reason, n in sorted(g.lost_by_reason.items()):
        lost.add_metric([reason], n)
    yield lost
    missing = GaugeMetricFamily(
        "bikeguard_ingest_batches_missing_now",
        "Batches asked for and still missing, by station (as of the last gap check)",
        labels=["station"],
    )
    for station, n in sorted(ingest.batches_missing_now.items()):
        missing.add_metric([station], n)
    yield missing


def registry_for(ingest: Ingest | IngestWorkers | None) -> CollectorRegistry:
    """A registry of this app's own (tests run many apps in one process; the global one would mix them)."""
    registry = CollectorRegistry(auto_describe=False)
    if ingest is not None:
        registry.register(IngestCollector(ingest))
    return registry
