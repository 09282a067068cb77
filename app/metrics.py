"""Prometheus metrics, one registry per app instance (so tests can build several apps)."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cifar10_requests", "HTTP requests by route and status.",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("cifar10_request_duration_seconds", "HTTP request latency by route.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predicted = Counter("cifar10_predicted_class", "Predictions by top class.", ["label"],
                                 registry=self.registry)
        self.images = Counter("cifar10_images_processed", "Images run through the model.", registry=self.registry)
        self.batch_size = Histogram("cifar10_inference_batch_size", "Images per model call.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.answers_by_level = Counter("cifar10_answers_by_level", "Images answered, by the accuracy level "
                                        "that computed them.", ["level"], registry=self.registry)
        self.rejected = Counter("cifar10_rejected_images", "Uploads refused before the model, by reason.",
                                ["reason"], registry=self.registry)
        self.batcher_restarts = Counter("cifar10_batcher_restarts", "Times the batching worker failed and was "
                                        "restarted (the requests waiting for it got 503).", registry=self.registry)
        self.model_version = Gauge("cifar10_model_version", "Version of the model answering now.",
                                   registry=self.registry)
        self.model_swaps = Counter("cifar10_model_swaps", "Times a newer model version replaced the served one.",
                                   registry=self.registry)
        self.model_versions_rejected = Counter(
            "cifar10_model_versions_rejected", "Model versions skipped instead of served, by reason "
            "(incomplete, unloadable, contract, bad_output).", ["reason"], registry=self.registry)

    def observe_batch(self, size: int, level: str) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)
        self.answers_by_level.labels(level).inc(size)


def serve_metrics(metrics: Metrics, host: str, port: int) -> Callable[[], None]:
    """Serve ``metrics`` on HOST:PORT from a thread of its own (METRICS_PORT); returns what stops it.

    prometheus_client's own small server: a scrape costs the event loop nothing, and the port can be
    left out of a load balancer or Service while Prometheus reaches it directly."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
