"""The platform's one settings object, read from TP_* environment variables with documented defaults."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

EMBEDDED_S3_PORT = 9555

# Read by glibc and OpenMP when a process starts, so they are set in the environment of every step
# process (local), pod (k8s executor) and image, never left to the user. Without them glibc returns
# the model's buffers to the kernel after every forward pass, and idle OpenMP threads spin on the
# cores that fetch and decode need. Since nothing is trimmed, each of glibc's per-thread arenas would
# keep its own high-water mark, so the fetch and decode threads share two. pyarrow allocates on glibc's
# heap, so the chunk's table reuses what decoding freed instead of taking fresh memory.
# The figures behind each setting are in docs/benchmarks.md (process settings).
PROCESS_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_TOP_PAD_": "536870912",
    "MALLOC_ARENA_MAX": "2",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "OMP_WAIT_POLICY": "PASSIVE",
}


class SettingsError(ValueError):
    """An environment variable holds a value the platform cannot use; the message names the variable."""


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Every knob of the platform. Each field is read from `TP_<FIELD NAME IN CAPITALS>`.

    The defaults are the embedded (`local`) deployment: an S3-compatible server on loopback and
    buckets named after their role. Production (`k8s`) sets the S3 endpoint empty (AWS) and names
    real buckets.
    """

    deployment: str = "local"
    # Empty means AWS. The local deployment talks to the embedded server on this port by default.
    s3_endpoint: str = f"http://127.0.0.1:{EMBEDDED_S3_PORT}"
    aws_region: str = "us-east-1"
    manifest_bucket: str = "manifests"
    manifest_prefix: str = "incoming/"
    # "bucket" allows a whole bucket, "bucket/prefix/" a part of one.
    allowed_image_prefixes: tuple[str, ...] = ("images",)
    output_bucket: str = "tags"
    output_prefix: str = "published/"
    allowed_output_prefixes: tuple[str, ...] = ("tags",)
    warehouse_bucket: str = "warehouse"
    model_bucket: str = "models"
    default_model: str = "mobilenet_v2"
    # Tag selection: the top_k classes whose confidence reaches min_confidence.
    top_k: int = 5
    min_confidence: float = 0.05
    # A tag below this confidence counts as low-confidence for the quality metrics and checks.
    low_confidence: float = 0.3
    low_confidence_share_warn: float = 0.5
    # Drift: Jensen-Shannon divergence of a manifest's tag distribution from the trailing manifests'.
    drift_baseline_manifests: int = 5
    drift_warn_jsd: float = 0.5
    error_rate_warn: float = 0.01
    error_rate_error: float = 0.05
    # Chunk planning (see planning.py): a pod's start-up cost against the per-image cost.
    ms_per_image: float = 10.0
    startup_s: float = 300.0
    max_gpus: int = 8
    deadline_min: float = 60.0
    min_chunk_images: int = 500
    max_chunk_images: int = 50_000
    # What one GPU-hour of the pool costs, for the cost `tagging-platform retag` estimates before re-tagging.
    gpu_hour_usd: float = 2.5
    # Published output: JSON Lines parts of this many objects, or one object per image.
    publish_format: str = "jsonl"
    publish_part_images: int = 10_000
    # Engine. Batch size 0: the size a short probe measured fastest for the model on this kind of machine
    # (tagging_platform.tuning); any other value pins it. Precision "auto": the device's native lower precision
    # (bfloat16 on CPUs that have it, float16 on CUDA) where the accuracy gate passed it for the model version.
    batch_size: int = 0
    precision: str = "auto"
    fetch_workers: int = 4
    device: str = "auto"
    # Intake: "listing" lists the manifest bucket with a cursor; "events" reads the bucket's S3 event
    # notifications from an SQS queue (production with large buckets: nothing is listed).
    intake: str = "listing"
    sensor_interval_s: int = 5
    sensor_max_keys_per_tick: int = 10_000
    # A listing tick also stops after the page during which this many seconds ran out, far from Dagster's
    # 60 s limit on a sensor evaluation: a page costs more the larger the bucket. The next tick resumes there.
    sensor_tick_budget_s: float = 5.0
    manifest_queue: str = "manifest-events"
    manifest_dead_letter_queue: str = "manifest-events-dead-letter"
    # A message received this many times without being handled moves to the dead-letter queue.
    max_receives: int = 5
    # Longer than two sensor intervals: a message is deleted one tick after its run is recorded.
    queue_visibility_s: int = 60
    events_per_tick: int = 2_000
    max_manifest_images: int = 10_000_000
    # A manifest (after gunzip) larger than this is rejected while it is read, so a gzip bomb never inflates
    # further; 10,000,000 images of about 100 bytes each fit.
    max_manifest_bytes: int = 1024 * 1024 * 1024
    # A Prometheus Pushgateway (http://host:9091) that tagging steps push their figures to; empty: none.
    metrics_pushgateway: str = ""
    # The k8s deployment's GPU pool, used for the tag_chunk step pods.
    gpu_node_selector: str = "tagging.platform/pool=gpu"
    gpu_toleration_key: str = "nvidia.com/gpu"
    # k8s: a step pod the scheduler cannot place for this long (no GPU free, pool cordoned or at quota) fails
    # its step with the scheduler's reason instead of leaving the run pending forever. Longer than a GPU node
    # takes to start from zero.
    step_unschedulable_timeout_s: int = 900
    # The HTTP API (tagging_platform/api, `tagging-platform api`): where it listens, which Dagster
    # webserver it reads batch status from (GraphQL), and what it accepts.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    dagster_url: str = "http://127.0.0.1:3000"
    # A request body larger than this (a manifest, uploaded images) is refused with 413.
    api_max_body_bytes: int = 16 * 1024 * 1024
    # A manifest the API reads from an s3:// URI may be at most this large.
    api_max_manifest_bytes: int = 256 * 1024 * 1024
    # Images in one synchronous POST /v1/tag request.
    api_max_tag_images: int = 8
    # Loaded models an API process keeps (least recently used goes first), and how long an unused one stays.
    api_model_cache: int = 2
    api_model_idle_s: int = 900
    # 1: load the default model when the API starts, so the first POST /v1/tag is fast; 0: on first use.
    api_preload_default_model: int = 1
    # Customers and their hashed API keys, in the warehouse bucket.
    api_customers_prefix: str = "api/customers/"
    # The canary (tagging_platform/canary.py): on this cron schedule (UTC) known photographs are tagged as a
    # batch of their own and the published tags compared with expectations a person wrote. 0: the schedule
    # starts stopped (the demo; it can still be started from the UI).
    canary_enabled: int = 1
    canary_cron: str = "*/30 * * * *"
    # Where the schedule uploads the canary's photographs; must be inside the allowed image locations.
    canary_image_prefix: str = "s3://images/canary/"
    # An expectations file shaped like tagging_platform/data/canary.json; empty: that file.
    canary_expectations: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            name = f"TP_{f.name.upper()}"
            if name not in environ:
                continue
            values[f.name] = _convert(name, environ[name], f)
        if environ.get("TP_DEPLOYMENT", "local") != "local" and "TP_S3_ENDPOINT" not in environ:
            values["s3_endpoint"] = ""
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.deployment not in ("local", "k8s"):
            raise SettingsError(f"TP_DEPLOYMENT must be 'local' or 'k8s', not {self.deployment!r}")
        if self.intake not in ("listing", "events"):
            raise SettingsError(f"TP_INTAKE must be 'listing' or 'events', not {self.intake!r}")
        if self.precision not in ("auto", "float32", "bfloat16", "float16"):
            raise SettingsError(
                f"TP_PRECISION must be 'auto', 'float32', 'bfloat16' or 'float16', not {self.precision!r}"
            )
        if self.batch_size < 0:
            raise SettingsError(f"TP_BATCH_SIZE must be 0 (measured) or a batch size, not {self.batch_size}")
        if self.publish_format not in ("jsonl", "objects"):
            raise SettingsError(
                f"TP_PUBLISH_FORMAT must be 'jsonl' or 'objects', not {self.publish_format!r}"
            )
        if not 0 <= self.error_rate_warn <= self.error_rate_error <= 1:
            raise SettingsError("TP_ERROR_RATE_WARN must be <= TP_ERROR_RATE_ERROR, both in [0, 1]")
        for name in ("manifest_prefix", "output_prefix", "api_customers_prefix", "canary_image_prefix"):
            value = getattr(self, name)
            if value and not value.endswith("/"):
                raise SettingsError(f"TP_{name.upper()} must end with '/': {value!r}")

    @property
    def output_root(self) -> str:
        return f"s3://{self.output_bucket}/{self.output_prefix}"

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in another process (a step, a pod)."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            env[f"TP_{f.name.upper()}"] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env


def _convert(name: str, raw: str, f: dataclasses.Field) -> object:
    kind = type(f.default) if f.default is not dataclasses.MISSING else str
    try:
        if kind is tuple:
            return _split_list(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a {kind.__name__}, not {raw!r}") from None
    return raw

