"""Every setting of the service, read from environment variables (names are the fields, upper-cased)."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from app.saliency import Occlusion
from core.contract import LevelName
from core.cpus import available_cpus
from core.level_table import LevelSettings
from core.preprocessing import DEFAULT_MAX_PIXELS
from core.runtime import RuntimeOptions


def cpus_per_worker(workers: int) -> int:
    return max(1, available_cpus() // workers)


# Decided from bench/serve.py: see docs/serving-performance.md, "Load adaptation". Images waiting or being
# computed: 64 connections never have more than 64 (so it never triggers, whatever BATCH_CONCURRENCY is);
# 256 connections have more nearly all the time (at 128, a tenth of their answers stayed at the default
# level and p99 doubled). Counting the queue alone, the threshold had to move with every batch allowed in
# flight, and three in flight left 256 connections at most 64 queued.
ADAPT_QUEUE_IMAGES_DEFAULT = 64


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_dir: Path = Field(
        Path("models/cifar10"), description="Model directory; its highest integer version is served."
    )
    host: str = Field("127.0.0.1", description="Address uvicorn binds (the container sets 0.0.0.0).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes; each loads its own model.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest request body, in bytes.")
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Largest width x height accepted, checked before decoding."
    )
    max_batch_files: int = Field(32, ge=1, le=1000, description="Most images in one /predict/batch request.")
    # Each worker runs its own pools: by default they share the CPUs instead of each taking all of them
    # (threads beyond the cores only contend). deploy/docker-entrypoint.sh does the same from a CPU quota.
    inference_threads: int = Field(
        default_factory=lambda data: cpus_per_worker(data.get("workers", 1)), ge=1,
        description="Inference threads per worker: OpenVINO's INFERENCE_NUM_THREADS (default: CPUs available / "
        "WORKERS).",
    )
    decode_threads: int = Field(
        default_factory=lambda data: cpus_per_worker(data.get("workers", 1)), ge=1,
        description="Threads per worker that decode and resize large uploads (default: CPUs available / WORKERS).",
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="Most images gathered into one model call.")
    # With one batch at a time the model waits while the event loop answers the last batch and gathers the
    # next: at 256 connections on `fast` that costs a fifth of the answers, and a third batch in flight adds
    # ~10% at `fast` at 64 connections over two (docs/runtime.md, "One compilation per level"); each infer
    # request on the same compiled model costs ~7 MiB.
    batch_concurrency: int = Field(
        3, ge=1, le=16, description="Batches the model computes at once, each in its own inference thread "
        "(one OpenVINO infer request each); 1 = one batch at a time.",
    )
    max_batch_delay_ms: float = Field(
        0.0, ge=0.0, le=1000.0,
        description="Longest wait for more images before a model call; 0 = take what is queued, never wait.",
    )
    max_queue_images: int = Field(512, ge=1, description="Images waiting for the model before 503 Retry-After.")
    default_level: LevelName | None = Field(
        None, description="Accuracy level of requests that name none (default: the model's own, metadata.json's "
        "default_level: balanced for the shipped model).",
    )
    adapt_queue_images: int = Field(
        ADAPT_QUEUE_IMAGES_DEFAULT, ge=0,
        description="Load adaptation: while more images than this wait for the model or are being computed, "
        "requests that named no level are answered at ADAPT_LEVEL; 0 turns it off.",
    )
    adapt_level: LevelName = Field(
        "fast", description="The cheaper level load adaptation answers at.",
    )
    bfloat16: bool = Field(
        True, description="Run in bfloat16 the levels whose export chose it for OpenVINO (faster, accuracy and ECE "
        "at most 0.1 points worse; only on a CPU with AVX512-BF16 or AMX; elsewhere float32 regardless).",
    )
    int8: bool = Field(
        True, description="Run in int8 the levels whose export chose a quantized OpenVINO model for them (faster, "
        "accuracy and ECE at most 0.1 points worse than float32); false: those levels run in float32.",
    )
    ood_threshold: float | None = Field(
        None, description="Answers whose ood_score is above this are marked in_distribution: false, at every level "
        "(default: the thresholds the model's export fitted, metadata.json's ood; a model without them gets "
        "in_distribution: null).",
    )
    max_concurrent_explanations: int = Field(
        2, ge=1, le=64, description="Explanations (POST /explain) computed at once; more are refused with 503 "
        "and Retry-After. Each costs a batch of model calls at the fast level.",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline for reading a request body.")
    # Above the longest wait a full queue gives at the slowest level (MAX_QUEUE_IMAGES at ~150 images/s is
    # ~3.5 s on 2 CPUs), and below nginx's proxy_read_timeout (60 s), so the client reads this JSON 504.
    inference_timeout_s: float = Field(
        30.0, gt=0, description="Longest a request waits for its answer (the decode pool, decoding, the queue and "
        "computation) before 504; a request never waits longer.",
    )
    keep_alive_s: int = Field(
        75, ge=1, le=3600,
        description="Seconds an idle keep-alive connection stays open. Longer than clients keep theirs (httpx "
                    "5 s, nginx's upstream keepalive 60 s), so they stop reusing it first: a client that reuses "
                    "a connection just as the server closes it sees a failed request.",
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0.0, le=300.0,
        description="After SIGTERM, seconds /readyz answers 503 while requests are still served, before the "
                    "server stops accepting and drains; 0 = drain at once.",
    )
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$", description="Log level.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off.")
    model_poll_seconds: float = Field(
        30.0, ge=0.0, description="How often MODEL_DIR is checked for a higher version to swap in; 0 = never.",
    )
    model_version: int | None = Field(
        None, ge=1, description="Serve exactly this version of MODEL_DIR and never swap; unset = the highest.",
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one 'NAME SHA256HEX' line each (`python -m app keys new NAME`): "
        "the prediction routes then answer only with a valid key (Bearer or X-API-Key); re-read when it "
        "changes. Unset = no keys.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve /metrics on this port (same HOST) instead of PORT, for "
        "deployments without a proxy to hide it; unset = /metrics on PORT.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value  # LOG_LEVEL=INFO, as Python's own names go

    @model_validator(mode="after")
    def _limits_agree(self) -> "Settings":
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(f"METRICS_PORT must differ from PORT ({self.port}); unset it to serve /metrics on PORT")
        if self.metrics_port is not None and self.workers > 1:
            # Each worker process counts on its own; one port cannot show them all (nor can /metrics on PORT).
            raise ValueError("METRICS_PORT needs WORKERS=1: each worker process keeps its own counters. Run more "
                             "replicas instead of more workers, or unset METRICS_PORT")
        # A request whose own images exceed the queue could never be queued: 503 "retry in a second", forever.
        largest = max(self.max_batch_files, Occlusion().batch_size)
        if self.max_queue_images < largest:
            raise ValueError(f"MAX_QUEUE_IMAGES ({self.max_queue_images}) must be at least {largest}, the most images "
                             f"one request queues (MAX_BATCH_FILES {self.max_batch_files}; an explanation "
                             f"{Occlusion().batch_size})")
        return self

    def runtime_options(self) -> RuntimeOptions:
        """How a loaded model may use the machine: INFERENCE_THREADS, BATCH_CONCURRENCY."""
        return RuntimeOptions(threads=self.inference_threads, concurrency=self.batch_concurrency)

    def level_settings(self) -> LevelSettings:
        """Which level answers requests that name none, and whether bfloat16 and int8 may serve."""
        return LevelSettings(self.default_level, self.bfloat16, self.int8)


class SettingsProblem(ValueError):
    """The environment holds a value the service cannot run with: one line naming each variable and the fix."""


def read_settings() -> Settings:
    """The settings from the environment; a bad value raises SettingsProblem rather than pydantic's report,
    which names fields, not variables, and adds errors for defaults that could not be computed because of it."""
    try:
        return Settings()
    except ValidationError as error:
        problems = [_problem(item) for item in error.errors() if item["type"] != "default_factory_not_called"]
        raise SettingsProblem("error: " + "; ".join(problems)) from None
    except SettingsError as error:  # a list setting that is not JSON: pydantic-settings names the field alone
        field = match.group(1) if (match := re.search(r'field "(\w+)"', str(error))) else "a setting"
        raise SettingsProblem(f'error: {field.upper()} must be a JSON list, e.g. {field.upper()}=\'["https://'
                              f'example.com"]\' ({error.__cause__ or error})') from None


def _problem(item: Any) -> str:
    variable = ".".join(str(part) for part in item["loc"]).upper()
    message = str(item["msg"]).removeprefix("Value error, ")
    return f"{variable} {item['input']!r}: {message}" if variable else message


@lru_cache
def get_settings() -> Settings:
    return read_settings()
