"""The platform's one settings object, read from TP_* environment variables with documented defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_BAD_PREFIX_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def allowed_location(entry: str) -> str:
    """An allow-list entry, "s3://bucket/prefix/" or "bucket/prefix/" alike, as "bucket" or "bucket/prefix/".

    An entry is a folder: "bucket/in" means "bucket/in/", so it does not admit "bucket/inbox/...".
    Anything that is not a bucket with an optional prefix raises ValueError saying why.
    """
    path = entry.strip().removeprefix("s3://")
    if "://" in path:
        raise ValueError(f"{entry!r} is not an s3:// location")
    bucket, _, prefix = path.partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise ValueError(f"{entry!r}: {bucket!r} is not a bucket name")
    if _BAD_PREFIX_CHAR.search(prefix) or {".", ".."} & set(prefix.split("/")):
        raise ValueError(f"{entry!r}: the prefix holds a control character, a backslash or a '.' or '..' segment")
    return f"{bucket}/{prefix.rstrip('/')}/" if prefix.strip("/") else bucket


ENV_PREFIX = "TP_"
# Set while from_env() reads the process environment: Settings(...) itself is the shipped defaults plus what it
# is given, whatever the environment holds (tests and tools build settings beside a configured process).
_FROM_PROCESS_ENV: ContextVar[bool] = ContextVar("from_process_env", default=False)
# A list setting is written as comma-separated items in its variable, not as JSON.
CommaList = Annotated[tuple[str, ...], NoDecode]


# How tags are published: JSON Lines parts or one object per image of the platform's own tag objects, or
# parts of DetectLabels responses ("rekognition") or of a Ground Truth output manifest ("groundtruth").
PUBLISH_FORMATS = ("jsonl", "objects", "rekognition", "groundtruth")


class Settings(BaseSettings):
    """Every knob of the platform. Each field is read from `TP_<FIELD NAME IN CAPITALS>`.

    The defaults are the embedded (`local`) deployment: an S3-compatible server on loopback and
    buckets named after their role. Production (`k8s`) sets the S3 endpoint empty (AWS) and names
    real buckets. Booleans take true/false (or 1/0, yes/no); lists are comma-separated.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    deployment: Literal["local", "k8s"] = "local"
    # Empty means AWS. The local deployment talks to the embedded server on this port by default.
    s3_endpoint: str = f"http://127.0.0.1:{EMBEDDED_S3_PORT}"
    aws_region: str = "us-east-1"
    manifest_bucket: str = "manifests"
    manifest_prefix: str = "incoming/"
    # "bucket" allows a whole bucket, "bucket/prefix/" (or "s3://bucket/prefix/") the folder "prefix/" of one.
    allowed_image_prefixes: CommaList = ("images",)
    output_bucket: str = "tags"
    output_prefix: str = "published/"
    allowed_output_prefixes: CommaList = ("tags",)
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
    # GPU steps all batches together may run at once: Dagster's "gpu" pool limit on tag_chunk as well.
    max_gpus: int = 8
    deadline_min: float = 60.0
    min_chunk_images: int = 500
    # Checkpoints bound what a lost pod redoes, so this bounds only a chunk's spec (its image list travels
    # between steps); the deadline and TP_MAX_GPUS decide chunk sizes below it.
    max_chunk_images: int = 500_000
    # A tag_chunk step commits its rows as a Parquet part every this many images or seconds, whichever
    # comes first; a retried attempt tags only what no part holds, so a lost pod loses at most one interval.
    checkpoint_images: int = 10_000
    checkpoint_s: float = 120.0
    # What one GPU-hour of the pool costs, for the cost `tagging-platform retag` estimates before re-tagging.
    gpu_hour_usd: float = 2.5
    # Published output (a native manifest's "output_format" overrides it): parts of this many records, or one
    # object per image.
    publish_format: Literal[PUBLISH_FORMATS] = "jsonl"
    publish_part_images: int = 10_000
    # Engine. Batch size 0: the size a short probe found fastest for the model on the hardware it loads on
    # (tagging_platform.tuning); any other value pins it. Precision "auto": the device's native lower precision
    # (bfloat16 on CPUs that have it, float16 on CUDA) where the accuracy gate passed it for the model version.
    batch_size: int = 0
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    fetch_workers: int = 4
    device: str = "auto"
    # Intake: "listing" lists the manifest bucket with a cursor; "events" reads the bucket's S3 event
    # notifications from an SQS queue (production with large buckets: nothing is listed).
    intake: Literal["listing", "events"] = "listing"
    sensor_interval_s: int = 5
    # The API launches a submitted batch's run itself (listing intake only), with the run key the manifest sensor
    # would use; the sensor leaves such a manifest alone this long, then requests the run as usual, so a launch
    # that failed is retried by the sensor and one that succeeded keeps its run key's single run.
    api_launch_runs: bool = True
    api_launch_grace_s: float = 60.0
    # A local batch of at most this many images, planned as one chunk, runs every step in its run's own process
    # (intake.run_config): its steps run one after another anyway, and a process per step only adds their starts.
    # Above it a step process of its own keeps a long tagging step's crash to that step, retried within the run
    # from its checkpoints, rather than failing the run for the instance's run retries. 0: a process per step always.
    in_process_max_images: int = 50_000
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
    # takes to start from zero; a tag_chunk pod's limit adds what the waves of its plan ahead of it need.
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
    # An image POST /v1/tag decodes may have at most this many pixels (width x height, read from its header
    # before anything is decoded); larger ones are refused with 413 image_too_large. Submit a batch for them.
    api_max_tag_pixels: int = 89_478_485
    # Decoded pixels in flight in one API process, shared by every request: an image waits for its share
    # (at most api_decode_wait_s, then 503 busy). A decoded pixel holds 3 to 7 bytes while it is reduced.
    api_decode_budget_pixels: int = 100_000_000
    api_decode_wait_s: float = 120.0
    # The base of every link the API returns (status_url, Location), e.g. https://tagging.example.com; never
    # taken from a request's Host header. Empty: http://<api_host>:<api_port>.
    api_public_url: str = ""
    # Loaded models an API process keeps (least recently used goes first), and how long an unused one stays.
    api_model_cache: int = 2
    api_model_idle_s: int = 900
    # How long an API process keeps what a model name (no @version) resolved to before reading the name's
    # latest pointer again: a model published as latest reaches POST /v1/tag within this. A name@version is
    # a content hash and is read once. 0: read the pointer on every request.
    api_model_alias_ttl_s: float = 5.0
    # Load the default model when the API starts, so the first POST /v1/tag is fast; false: on first use.
    api_preload_default_model: bool = True
    # POST /v1/tag requests of one model that arrive within this window share one forward pass, of at most
    # api_tag_max_batch images (a request is never split; one larger than that runs alone). 0: no waiting,
    # only requests that arrived during the previous pass are batched.
    api_tag_batch_window_ms: float = 5.0
    api_tag_max_batch: int = 32
    # Per customer and API process: POST /v1/tag requests a second (a token bucket holding api_tag_burst),
    # and unfinished batches (POST /v1/batches accepted, run not over). Beyond either: 429 with Retry-After.
    # 0: no limit.
    api_tag_rate_per_s: float = 50.0
    api_tag_burst: int = 100
    api_max_active_batches: int = 20
    # Runs of one customer's batches (run tag tagging/customer) Dagster's run queue starts at once, locally
    # (local.py) and in deploy/values.yaml: one customer's burst waits behind its own runs, not others'.
    runs_per_customer: int = 1
    # Customers and their hashed API keys, in the warehouse bucket.
    api_customers_prefix: str = "api/customers/"
    # The canary (tagging_platform/canary.py): on this cron schedule (UTC) known photographs are tagged as a
    # batch of their own and the published tags compared with expectations a person wrote. false: the
    # schedule starts stopped (the demo; it can still be started from the UI).
    canary_enabled: bool = True
    canary_cron: str = "*/30 * * * *"
    # Where the schedule uploads the canary's photographs; must be inside the allowed image locations.
    canary_image_prefix: str = "s3://images/canary/"
    # An expectations file shaped like tagging_platform/data/canary.json; empty: that file.
    canary_expectations: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of this process's environment, or of `environ` alone when it is given."""
        try:
            if environ is None:
                token = _FROM_PROCESS_ENV.set(True)
                try:
                    return cls()
                finally:
                    _FROM_PROCESS_ENV.reset(token)
            values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
            return cls(**{k: v for k, v in values.items() if k in cls.model_fields})
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        """The process environment only for from_env(); otherwise what the constructor is given."""
        return (init_settings, env_settings) if _FROM_PROCESS_ENV.get() else (init_settings,)

    @classmethod
    def variable_names(cls) -> set[str]:
        return {f"{ENV_PREFIX}{name.upper()}" for name in cls.model_fields}

    @field_validator("*", mode="before")
    @classmethod
    def _split_comma_lists(cls, value: Any, info) -> Any:
        if isinstance(value, str) and cls.model_fields[info.field_name].annotation == tuple[str, ...]:
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("allowed_image_prefixes", "allowed_output_prefixes")
    @classmethod
    def _one_form_of_location(cls, entries: tuple[str, ...], info) -> tuple[str, ...]:
        """Kept in one form, so that every reader (manifests, the API, the embedded server) agrees."""
        try:
            return tuple(allowed_location(entry) for entry in entries)
        except ValueError as exc:
            raise ValueError(f"{exc}; an entry is s3://bucket/prefix/, bucket/prefix/ or bucket") from None

    @model_validator(mode="before")
    @classmethod
    def _aws_endpoint_outside_local(cls, values: Any) -> Any:
        """Outside the local deployment S3 is AWS unless an endpoint is given."""
        if isinstance(values, dict) and values.get("deployment", "local") != "local" and "s3_endpoint" not in values:
            return {**values, "s3_endpoint": ""}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not 0 <= self.error_rate_warn <= self.error_rate_error <= 1:
            raise ValueError("TP_ERROR_RATE_WARN must be <= TP_ERROR_RATE_ERROR, both in [0, 1]")
        self._validate_planning()
        if self.batch_size < 0:
            raise ValueError(f"TP_BATCH_SIZE must be 0 (measured) or a batch size, not {self.batch_size}")
        if self.api_max_tag_pixels > self.api_decode_budget_pixels:
            raise ValueError(
                "TP_API_MAX_TAG_PIXELS must not exceed TP_API_DECODE_BUDGET_PIXELS: that image could never decode"
            )
        for name in (
            "api_tag_batch_window_ms",
            "api_tag_rate_per_s",
            "api_max_active_batches",
            "api_model_alias_ttl_s",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"TP_{name.upper()} must not be negative (0: none), not {getattr(self, name)!r}")
        for name in ("api_tag_max_batch", "api_tag_burst", "runs_per_customer"):
            if getattr(self, name) < 1:
                raise SettingsError(f"TP_{name.upper()} must be at least 1, not {getattr(self, name)!r}")
        if self.api_public_url and not self.api_public_url.startswith(("http://", "https://")):
            raise ValueError(f"TP_API_PUBLIC_URL must start with http:// or https://, not {self.api_public_url!r}")
        # The sensor lists a manifest it left alone again only while it is newer than its listing's watermark
        # (tagging_platform/intake.py, CLOCK_SKEW_S).
        if not 0 < self.api_launch_grace_s < 300:
            raise ValueError(f"TP_API_LAUNCH_GRACE_S must be above 0 and below 300 s, not {self.api_launch_grace_s!r}")
        if self.in_process_max_images < 0:
            raise ValueError(f"TP_IN_PROCESS_MAX_IMAGES must be 0 or more, not {self.in_process_max_images!r}")
        for name in ("manifest_prefix", "output_prefix", "api_customers_prefix", "canary_image_prefix"):
            value = getattr(self, name)
            if value and not value.endswith("/"):
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must end with '/': {value!r}")
        return self

    def _validate_planning(self) -> None:
        for name in (
            "ms_per_image",
            "max_gpus",
            "deadline_min",
            "min_chunk_images",
            "checkpoint_images",
            "checkpoint_s",
        ):
            if not getattr(self, name) > 0:
                raise SettingsError(f"TP_{name.upper()} must be positive, not {getattr(self, name)!r}")
        if self.startup_s < 0:
            raise SettingsError(f"TP_STARTUP_S must not be negative, not {self.startup_s!r}")
        if self.max_chunk_images < self.min_chunk_images:
            raise SettingsError(
                f"TP_MAX_CHUNK_IMAGES ({self.max_chunk_images}) must be at least TP_MIN_CHUNK_IMAGES ({self.min_chunk_images})"
            )

    @property
    def api_base_url(self) -> str:
        return (self.api_public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def output_root(self) -> str:
        return f"s3://{self.output_bucket}/{self.output_prefix}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated like any other settings."""
        return type(self).from_env(
            {**self.as_env(), **{f"{ENV_PREFIX}{k.upper()}": _env_value(v) for k, v in changes.items()}}
        )

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in another process (a step, a pod)."""
        return {f"{ENV_PREFIX}{name.upper()}": _env_value(getattr(self, name)) for name in type(self).model_fields}


def _env_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _explain(exc: ValidationError) -> str:
    """pydantic's errors as the variables an operator sets: `TP_BATCH_SIZE: ... not 'x'`."""
    problems = []
    for error in exc.errors():
        field = error["loc"][0] if error["loc"] else None
        if isinstance(field, str):
            problems.append(
                f"{ENV_PREFIX}{field.upper()}: {error['msg'].removeprefix('Value error, ')}, not {error['input']!r}"
            )
        else:
            problems.append(error["msg"].removeprefix("Value error, "))
    return "; ".join(problems)
