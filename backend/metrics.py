"""The backend's Prometheus metrics: the ingest's counters and where heavy reads went, read at scrape time (no second
bookkeeping)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from backend.db.replica import Reads
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
        yield _labelled(
            "bikeguard_ingest_rejected", "Messages refused and kept in rejected_messages, by kind", "kind", c.rejected
        )
        yield _labelled(
            "bikeguard_ingest_station_batches_confirmed",
            "Batches stored and confirmed, by station",
            "station",
            c.batches_confirmed_by_station,
        )
        yield _labelled(
            "bikeguard_ingest_station_conflicts",
            "Batches reusing a stored batch_seq, by station",
            "station",
            c.conflicts_by_station,
        )
        queued = GaugeMetricFamily("bikeguard_ingest_queued", "Messages waiting in the ingest's lanes", labels=["lane"])
        for lane, n in self.ingest.queued().items():
            queued.add_metric([lane], n)
        yield queued
        yield from _gap_metrics(self.ingest)
        yield from _v2_metrics(self.ingest)
        yield GaugeMetricFamily(
            "bikeguard_ingest_broker_connected", "1 if the broker is connected", value=int(self.ingest.broker_connected)
        )


def _labelled(name: str, text: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter family with one series per value of its one label, in order."""
    family = CounterMetricFamily(name, text, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family


def _v2_metrics(ingest: Ingest | IngestWorkers) -> Iterator[Metric]:
    """v2 chips' beacons resolved (backend.ingest.v2): by verdict, and what became of their sightings and alerts."""
    v2 = ingest.v2_counters
    yield _labelled("bikeguard_ingest_v2_beacons", "v2 beacons resolved, by verdict", "verdict", v2.beacons)
    yield _labelled(
        "bikeguard_ingest_v2_sightings",
        "v2 sightings: resolved and stored, unknown (no chip sends the eid) or cloned (an alarm, not stored)",
        "outcome",
        {"resolved": v2.sightings_resolved, "unknown": v2.sightings_unknown, "cloned": v2.sightings_cloned},
    )
    yield _labelled(
        "bikeguard_ingest_v2_alerts",
        "v2 alerts resolved or dropped",
        "outcome",
        {"resolved": v2.alerts_resolved, "dropped": v2.alerts_dropped},
    )
    yield _labelled(
        "bikeguard_ingest_v2_table_moves",
        "v2 resolution tables moved to the next window: in the background, or by a flush that found one behind",
        "by",
        {"background": v2.table_moves_background, "flush": v2.table_moves_in_flush},
    )
    yield CounterMetricFamily(
        "bikeguard_ingest_v2_keys_unreadable", "v2 chip keys the vault could not open", value=v2.keys_unreadable
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
        yield _labelled(name, f"{text}, by station", "station", counts)
    yield _labelled(
        "bikeguard_ingest_batches_lost",
        "Missing batches their station no longer holds, by reason",
        "reason",
        g.lost_by_reason,
    )
    missing = GaugeMetricFamily(
        "bikeguard_ingest_batches_missing_now",
        "Batches asked for and still missing, by station (as of the last gap check)",
        labels=["station"],
    )
    for station, n in sorted(ingest.batches_missing_now.items()):
        missing.add_metric([station], n)
    yield missing


class ReadsCollector(Collector):
    """Where heavy reads went (the streaming replica, or the primary and why) and the replica's lag as last measured."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    def collect(self) -> Iterator[Metric]:
        """Reads by server and reason; the replica's state (up, lag, why reads go to the primary now) if one is set."""
        from backend.db.replica import FALLBACKS

        r = self.reads
        served = CounterMetricFamily(
            "bikeguard_database_reads",
            "Heavy reads (trajectories, passages, last seen, station activity) by the server that answered them, and"
            " why the primary did (no_replica, replica_away, replica_lagging, not_a_standby)",
            labels=["served_by", "reason"],
        )
        for (served_by, reason), n in sorted(r.served.items()):
            served.add_metric([served_by, reason], n)
        yield served
        if not r.configured:
            return
        yield GaugeMetricFamily(
            "bikeguard_database_replica_up", "1 if the replica answered its last check", value=int(r.up)
        )
        if r.lag_s is not None:
            yield GaugeMetricFamily(
                "bikeguard_database_replica_lag_seconds",
                "How far the replica is behind the primary, as last measured (0 when it has replayed all it received)",
                value=r.lag_s,
            )
        fallback = GaugeMetricFamily(
            "bikeguard_database_replica_fallback",
            "1 for the reason heavy reads go to the primary now (all 0: they go to the replica)",
            labels=["reason"],
        )
        for reason in FALLBACKS[1:]:
            fallback.add_metric([reason], int(r.fallback == reason))
        yield fallback


def registry_for(ingest: Ingest | IngestWorkers | None, reads: Reads | None = None) -> CollectorRegistry:
    """A registry of this app's own (tests run many apps in one process; the global one would mix them)."""
    registry = CollectorRegistry(auto_describe=False)
    if ingest is not None:
        registry.register(IngestCollector(ingest))
    if reads is not None:
        registry.register(ReadsCollector(reads))
    return registry
