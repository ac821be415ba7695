"""Prometheus metrics of a stage, on a registry owned by the stage (no import-time globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from streamcore.faults import suppressed_lines

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class StageMetrics:
    """Every series a worker exports; names follow Prometheus conventions (base units, ``_total``)."""

    stage: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._stream_series()
        self._model_series()
        self._fault_series()
        r, s = self.registry, ("stage",)
        self.assigned = Gauge("stylestream_assigned_partitions", "Partitions owned", s + ("topic",), registry=r)
        # process_resident_memory_bytes, process_cpu_seconds_total...: the stage's registry is its own, so the
        # process series that prometheus_client puts on its global registry must be added here.
        ProcessCollector(registry=r)
        # Series that should exist at 0 from the start, so rates and alerts see them before the first event.
        for metric in (self.rebalances, self.processed, self.commits, self.inflight, self.queue_depth, self.ready,
                       self.topics_created, self.partitions_restarted):
            metric.labels(self.stage)

    def _stream_series(self) -> None:
        """Records in and out, latency, batching, consumer state."""
        r, s = self.registry, ("stage",)
        self.consumed = Counter("stylestream_messages_consumed_total", "Records fetched from Kafka", s + ("topic",), registry=r)
        self.processed = Counter("stylestream_messages_processed_total", "Records whose outputs were written", s, registry=r)
        self.dead_letters = Counter("stylestream_dead_letters_total", "Records sent to the DLQ", s + ("reason",), registry=r)
        self.skipped = Counter("stylestream_bad_records_skipped_total",
                               "Bad records left to the stage that owns their dead letter", s + ("reason",), registry=r)
        self.labeled = Counter("stylestream_posts_labeled_total", "Labels written to Redis and the labels topic", registry=r)
        self.hinted = Counter("stylestream_posts_with_hints_total", "Labels whose model used mined hints", registry=r)
        self.reemitted = Counter("stylestream_labels_reemitted_total", "Stored labels sent again for byte-identical "
                                 "copies of a post read while it was in flight", registry=r)
        self.stage_latency = Histogram("stylestream_stage_latency_seconds", "Fetch-to-output time per record", s,
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram("stylestream_end_to_end_latency_seconds", "Post produced to label written",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("stylestream_batch_size", "Images per model batch", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_wait = Histogram("stylestream_batch_wait_seconds", "Time an item waited for its batch",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("stylestream_queue_depth", "Items waiting for a model batch", s, registry=r)
        self.backpressure = Counter("stylestream_backpressure_pauses_total", "Times fetching was paused", s, registry=r)
        self.inflight = Gauge("stylestream_inflight_records", "Fetched records whose outputs are not yet written", s, registry=r)
        self.lag = Gauge("stylestream_consumer_lag", "Records behind the partition end", s + ("topic", "partition"), registry=r)
        self.rebalances = Counter("stylestream_rebalances_total", "Partition revocations seen", s, registry=r)
        self.commits = Counter("stylestream_offset_commits_total", "Offset commits", s, registry=r)

    def _model_series(self) -> None:
        """The serving model, training runs and the live guard."""
        r = self.registry
        self.model = Info("stylestream_model", "Serving model", registry=r)
        self.swaps = Counter("stylestream_model_swaps_total", "Serving-model hot swaps, by result", ("result",), registry=r)
        self.trainer_runs = Counter("stylestream_trainer_runs_total", "Training runs finished, by result", ("result",),
                                    registry=r)
        self.gate_results = Counter("stylestream_trainer_gate_results_total", "Promotion gate decisions",
                                    ("gate", "result"), registry=r)
        self.trainer_last_success = Gauge("stylestream_trainer_last_success_timestamp_seconds",
                                          "Unix time of the last successful training run", registry=r)
        # Progress of the training run in progress, and the live guard after a promotion.
        self.trainer_step = Gauge("stylestream_trainer_run_step", "Steps done by the training run in progress",
                                  registry=r)
        self.trainer_loss = Gauge("stylestream_trainer_run_loss", "Latest training loss of the run in progress",
                                  registry=r)
        self.trainer_elapsed = Gauge("stylestream_trainer_run_elapsed_seconds",
                                     "Wall time of the training run in progress", registry=r)
        self.trainer_running = Gauge("stylestream_trainer_run_in_progress", "1 while this replica runs a training run",
                                     registry=r)
        self.corrections = Counter("stylestream_model_corrections_total",
                                   "Corrected labels of a model version, by whether the label's top category was kept",
                                   ("version", "result"), registry=r)
        self.agreement = Gauge("stylestream_model_agreement_ratio",
                               "Share of a model version's corrected labels that the correction agreed with",
                               ("version",), registry=r)
        self.rollbacks = Counter("stylestream_model_rollbacks_total",
                                 "Serving versions rolled back by the live guard", registry=r)

    def _fault_series(self) -> None:
        """Text mining, infrastructure errors, bad state, readiness and recovery."""
        r, s = self.registry, ("stage",)
        self.mined = Counter("stylestream_text_mined_posts_total", "Posts mined", registry=r)
        self.mine_seconds = Counter("stylestream_text_mine_seconds_total", "Wall seconds spent in the miner", registry=r)
        self.mine_failures = Counter("stylestream_text_mine_failures_total",
                                     "Posts the miner raised on (sent on with empty hints)", registry=r)
        self.infra_errors = Counter("stylestream_infrastructure_errors_total",
                                    "Redis/Kafka operations that failed and were retried", s + ("operation",), registry=r)
        self.bad_state = Counter("stylestream_bad_state_total", "Unusable values read from Redis, ignored",
                                 s + ("key",), registry=r)
        self.hints_released = Counter("stylestream_hints_released_total",
                                      "Held hints committed without their post, by reason", ("reason",), registry=r)
        self.ready = Gauge("stylestream_ready", "1 when the worker is ready", s, registry=r)
        self.stuck = Gauge("stylestream_stuck", "1 while a Redis/Kafka operation has failed for stuck_after_s, "
                           "or topics the stage needs are missing", s, registry=r)
        self.topics_created = Counter("stylestream_topics_created_total",
                                      "Missing topics the stage created again", s, registry=r)
        self.partitions_restarted = Counter("stylestream_partitions_restarted_total",
                                            "Owned partitions found to end before the offsets read (the broker "
                                            "lost them): read again from their start", s, registry=r)
        self.bad_model = Counter("stylestream_model_bad_pointer_total",
                                 "Startups whose serving pointer named a model that failed verification",
                                 registry=r)
        _SuppressedLines(registry=r)


class _SuppressedLines(Collector):
    """Log lines the process held back as repeats (:class:`streamcore.faults.RepeatFilter`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def collect(self):
        yield CounterMetricFamily("stylestream_log_lines_suppressed", "Repeated log lines held back",
                                  value=suppressed_lines())
