"""`tagging-platform`: run the demo or a dev deployment, submit manifests, register models, plan, query.

Each subcommand is one `_add_*` function that declares its arguments and names its handler with
`set_defaults(func=...)`; `main` parses and calls that handler, nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import mimetypes
import signal
import sys
import time
from pathlib import Path

from tagging_platform import layout, models, photos, planning, publishing, taxonomy, tuning
from tagging_platform.manifests import partition_key_for
from tagging_platform.s3 import make_client, read_bytes, split_uri
from tagging_platform.settings import EMBEDDED_S3_PORT, Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagging-platform", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_demo, _add_dev, _add_submit, _add_plan, _add_query, _add_model, _add_retag, _add_compare,
        _add_api, _add_status, _add_api_key,
    ):  # fmt: skip
        add(commands)
    return parser


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="tag a batch of real photographs end to end through the sensor")
    demo.add_argument("--workspace", type=Path, default=Path("workspace.yaml"))
    demo.add_argument("--variants", type=int, default=4, help="framings of each photograph (1 = originals only)")
    demo.add_argument("--timeout", type=float, default=900)
    demo.set_defaults(func=run_demo)


def _add_dev(commands) -> None:
    dev = commands.add_parser("dev", help="embedded S3 + dagster dev, until interrupted")
    dev.add_argument("--workspace", type=Path, default=Path("workspace.yaml"))
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--s3-port", type=int, default=EMBEDDED_S3_PORT)
    dev.set_defaults(func=run_dev)


def _add_submit(commands) -> None:
    submit = commands.add_parser("submit", help="upload a folder of images (or a manifest file) as a new batch")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("source", type=Path, nargs="?", help="a folder of images, or a manifest file")
    source.add_argument("--photos", action="store_true", help="the demo's photographs (scikit-image, scikit-learn)")
    submit.add_argument("--variants", type=int, default=4, help="with --photos: framings of each photograph")
    submit.add_argument("--name", help="the batch name (default: the folder or file name)")
    submit.add_argument("--model", help="model name or name@version")
    submit.set_defaults(func=run_submit)


# The `plan` options that default to a TP_* setting when not given.
PLAN_SETTINGS = ("ms_per_image", "startup_s", "max_gpus", "deadline_min", "gpu_hour_usd", "max_chunk_images")


def _add_plan(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="print the chunk plan for a workload; every number not given comes from the deployment's TP_* settings",
    )
    plan.add_argument("--images", type=int)
    plan.add_argument("--ms-per-image", type=float, help="default: TP_MS_PER_IMAGE")
    plan.add_argument("--startup-s", type=float, help="default: TP_STARTUP_S")
    plan.add_argument("--max-gpus", type=int, help="default: TP_MAX_GPUS")
    plan.add_argument("--deadline-min", type=float, help="default: TP_DEADLINE_MIN")
    plan.add_argument("--gpu-hour-usd", type=float, help="default: TP_GPU_HOUR_USD")
    plan.add_argument("--max-chunk-images", type=int, help="default: TP_MAX_CHUNK_IMAGES")
    plan.add_argument("--gpus-held", type=int, default=0, help="GPUs running batches already hold")
    plan.add_argument("--sizing", action="store_true", help="docs/operations.md's sizing table under these settings")
    plan.add_argument("--json", action="store_true")
    plan.add_argument(
        "--tradeoff", type=float, nargs="+", metavar="DEADLINE_MIN", help="a table: one plan per deadline"
    )
    plan.set_defaults(func=run_plan)


def _add_query(commands) -> None:
    query = commands.add_parser(
        "query",
        help="SQL over the tag tables: views `tags` (per image), `tag_labels` (per tag), `tag_parents` (per parent)",
    )
    query.add_argument("sql")
    query.add_argument("--manifest", action="append", help="only this batch (repeatable); default: all")
    query.add_argument("--model", help="only tags from this model, NAME or NAME@VERSION")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.set_defaults(func=run_query)


def _add_model(commands) -> None:
    model = commands.add_parser("model", help="the model registry: register a model, list models")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    _add_model_register(model_commands)
    model_commands.add_parser("list", help="every registered model's latest version").set_defaults(func=run_model_list)
    promote = model_commands.add_parser(
        "promote", help="make a registered version the model's latest (a rollback promotes the older version)"
    )
    promote.add_argument("model", metavar="NAME@VERSION", help="a registered version (a prefix of its hash will do)")
    promote.set_defaults(func=run_model_promote)


def _add_model_register(model_commands) -> None:
    register = model_commands.add_parser(
        "register", help="register a model version (the model registry sensor then materializes tagger_model)"
    )
    register.add_argument("name", help="lower-case letters, digits, '_', '.', '-'")
    artifact = register.add_mutually_exclusive_group(required=True)
    artifact.add_argument("--torchscript", type=Path, help="a scripted or traced network (torch.jit.save)")
    artifact.add_argument("--weights", type=Path, help="a state dict for --architecture")
    artifact.add_argument("--builtin", choices=sorted(models.BUILTIN_MODELS), help="a built-in model under a new name")
    register.add_argument("--architecture", help="torchvision model name (with --weights)")
    register.add_argument("--labels", type=Path, help="class names: a JSON list or one per line, in output order")
    # Defaults 256 and 224; with --builtin, the built-in model's own unless given (a new preprocessing is a new
    # version).
    register.add_argument("--resize", type=int)
    register.add_argument("--crop", type=int)
    register.add_argument("--mean", type=float, nargs=3, default=models.Preprocessing().mean, metavar=("R", "G", "B"))
    register.add_argument("--std", type=float, nargs=3, default=models.Preprocessing().std, metavar=("R", "G", "B"))
    register.add_argument("--accelerator", choices=models.ACCELERATORS, default="gpu")
    register.add_argument("--memory", default="8Gi", help="memory a step needs, as Kubernetes writes it")
    register.add_argument("--batch-size", type=int, default=32)
    register.add_argument("--description", default="")
    register.set_defaults(func=run_model_register)


def _add_retag(commands) -> None:
    retag = commands.add_parser(
        "retag", help="re-tag the batches an older version of a model tagged: the estimate, then one backfill of them"
    )
    retag.add_argument(
        "--model",
        required=True,
        metavar="NAME[@VERSION]",
        help="re-tag with NAME's latest version; @VERSION (a prefix will do) keeps only batches that version tagged",
    )
    retag.add_argument("--manifest", action="append", help="only this batch (repeatable); default: every stale batch")
    retag.add_argument("--dry-run", action="store_true", help="print the estimate and launch nothing")
    retag.add_argument("--dagster-url", help="the Dagster webserver (default: TP_DAGSTER_URL)")
    retag.set_defaults(func=run_retag)


def _add_compare(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="batches re-tagged by a new model version against the version they replaced (tag_quality_history)",
    )
    compare.add_argument("--manifest", action="append", help="only this batch (repeatable)")
    compare.set_defaults(func=run_compare)


def _add_api(commands) -> None:
    api = commands.add_parser("api", help="the customers' HTTP API (FastAPI; OpenAPI docs at /docs)")
    api.add_argument("--host", help="default: TP_API_HOST (127.0.0.1)")
    api.add_argument("--port", type=int, help="default: TP_API_PORT (8080)")
    api.add_argument(
        "--dev", action="store_true", help="also start the embedded S3 server and dagster dev (`make api`)"
    )
    api.add_argument("--workspace", type=Path, default=Path("workspace.yaml"))
    api.add_argument("--s3-port", type=int, default=EMBEDDED_S3_PORT)
    api.add_argument("--dagster-port", type=int, default=3000)
    api.set_defaults(func=run_api)


def _add_status(commands) -> None:
    status = commands.add_parser(
        "status", help="a batch's state, progress, counts and checks, over the HTTP API with your key (TP_API_KEY)"
    )
    status.add_argument("batch_id")
    status.add_argument("--api-url", help="default: TP_API_PUBLIC_URL, else http://TP_API_HOST:TP_API_PORT")
    status.set_defaults(func=run_status)


def _add_api_key(commands) -> None:
    api_key = commands.add_parser("api-key", help="API keys: one per customer, stored hashed")
    api_key.add_argument("action", choices=["create", "revoke"], help="revoke: the customer's key stops working")
    api_key.add_argument("customer", help="lowercase letters, digits and '-'")
    api_key.add_argument("--output-prefix", action="append", default=[], help="s3://bucket/prefix/ (repeatable)")
    images = api_key.add_mutually_exclusive_group()
    images.add_argument(
        "--image-prefix",
        action="append",
        default=[],
        help="where its images and manifests may come from (repeatable); default: s3://<images bucket>/<customer>/",
    )
    images.add_argument(
        "--all-images",
        action="store_true",
        help="let it read every allowed image location of the deployment (other customers' images too)",
    )
    api_key.add_argument("--rotate", action="store_true", help="replace the customer's existing key")
    api_key.set_defaults(func=run_api_key)


def run_api(args) -> int:
    from tagging_platform.api import serve

    if args.dev:
        settings = Settings.from_env()
        host, port = args.host or settings.api_host, args.port or settings.api_port
        return serve.run_dev(args.workspace, host, port, args.s3_port, args.dagster_port)
    return serve.serve(Settings.from_env(), args.host, args.port)


def run_api_key(args) -> int:
    from tagging_platform.api import serve

    if args.action == "revoke":
        return serve.revoke_key(args.customer)
    return serve.create_key(args.customer, args.output_prefix, args.image_prefix, args.rotate, args.all_images)


def run_status(args) -> int:
    """Exit 0 when the batch succeeded, queued or running; 1 when it completed with errors or failed; 2 on errors."""
    import os

    import requests

    key = os.environ.get("TP_API_KEY")
    if not key:
        print("error: set TP_API_KEY to your API key", file=sys.stderr)
        return 2
    url = (args.api_url or Settings.from_env().api_base_url).rstrip("/")
    try:
        response = requests.get(f"{url}/v1/batches/{args.batch_id}", headers={"X-API-Key": key}, timeout=60)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        print(f"error: {url}: {exc}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        print(f"error: {response.status_code} {body['error']['code']}: {body['error']['message']}", file=sys.stderr)
        return 2
    counts = body["counts"]
    print(
        f"batch {body['batch_id']}: {body['state']}, {body['progress']:.0%} done, "
        f"{counts['tagged']} of {counts['images']} images tagged, {counts['errors']} errors"
    )
    if body["error"]:
        print(f"  error{' in ' + body['error']['step'] if body['error']['step'] else ''}: {body['error']['message']}")
    for check in body["checks"]:
        print(f"  check {check['name']}: {'passed' if check['passed'] else 'FAILED (' + check['severity'] + ')'}")
    if body["result"]:
        print(f"  tags in {body['result']['location']}")
    return 1 if body["state"] in ("completed_with_errors", "failed") else 0


def run_query(args) -> int:
    from tagging_platform import warehouse

    try:
        result = warehouse.query(args.sql, manifests=args.manifest, model=args.model)
    except Exception as exc:  # noqa: BLE001 - DuckDB's and S3's errors, shown without a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    frame = result.to_pandas()
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", lines=True, date_format="iso"), end="")
    else:
        print(frame.to_string(index=False) if len(frame) else "(no rows)")
    return 0


def run_model_promote(args) -> int:
    settings = Settings.from_env()
    try:
        previous, ref = models.promote_model(make_client(settings), settings.model_bucket, args.model)
    except models.ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{ref.name}: latest is now {ref.version} (was {previous.version if previous else 'none'})")
    print(
        "the model registry sensor re-materializes tagger_model; `tagging-platform retag --model "
        f"{ref.name} --dry-run` lists the batches tagged by another version"
    )
    return 0


def run_model_list(args) -> int:
    settings = Settings.from_env()
    for card in models.list_models(make_client(settings), settings.model_bucket):
        print(
            f"{card['name']:<24} {card['version'][:23]}  {card['kind']:<17} {card['num_classes']:>5} classes  "
            f"{card['profile']['accelerator']}  precision: {tuning.describe_gate(card)}  "
            f"{card.get('description', '')[:60]}"
        )
    return 0


def run_model_register(args) -> int:
    settings = Settings.from_env()
    client = make_client(settings)
    try:
        card, artifact = _card_to_register(args)
        models.check_network(card, artifact)
        if models.is_registered(client, settings.model_bucket, card):
            print(f"{card.name} {card.version} is already registered")
        ref = models.publish_model(client, settings.model_bucket, card, artifact)
    except (models.ModelError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"registered {ref.name} {ref.version} in s3://{ref.bucket}/{card.prefix}")
    print(f'manifests can now say "model": "{ref.name}" (or "{ref.name}@{ref.short_version}")')
    return 0


def _card_to_register(args) -> tuple[models.ModelCard, bytes]:
    profile = models.ResourceProfile(accelerator=args.accelerator, memory=args.memory, batch_size=args.batch_size)
    if args.builtin:
        builtin, artifact = models.builtin_model(args.builtin)
        preprocessing = dataclasses.replace(
            builtin.preprocessing,
            resize=args.resize or builtin.preprocessing.resize,
            crop=args.crop or builtin.preprocessing.crop,
        )
        return dataclasses.replace(
            builtin,
            name=args.name,
            profile=profile,
            description=args.description or builtin.description,
            preprocessing=preprocessing,
        ), artifact
    if args.labels is None:
        raise ValueError("--labels is required with --torchscript or --weights")
    if args.weights and not args.architecture:
        raise ValueError("--weights needs --architecture (a torchvision model name)")
    text = args.labels.read_text()
    labels = (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [line.strip() for line in text.splitlines() if line.strip()]
    )
    artifact = (args.torchscript or args.weights).read_bytes()
    card = models.ModelCard(
        name=args.name,
        kind="torchscript" if args.torchscript else "torchvision",
        architecture=args.architecture,
        artifact_sha256=hashlib.sha256(artifact).hexdigest(),
        labels=tuple(str(label) for label in labels),
        parents=taxonomy.parents_for(labels),  # the ImageNet classes get their WordNet parents
        preprocessing=models.Preprocessing(
            resize=args.resize or 256, crop=args.crop or 224, mean=tuple(args.mean), std=tuple(args.std)
        ),
        description=args.description,
        source=str(args.torchscript or args.weights),
        profile=profile,
    )
    return card, artifact


def run_retag(args) -> int:
    from tagging_platform import retag
    from tagging_platform.dagster_client import DagsterClient, DagsterError

    settings = Settings.from_env()
    client = make_client(settings)
    name, _, older = args.model.partition("@")
    try:
        target = models.resolve_model(client, settings.model_bucket, name)
        batches = retag.stale_batches(settings, target, older or None, args.manifest)
    except (models.ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dagster = DagsterClient(args.dagster_url or settings.dagster_url)
    try:
        in_dagster = retag.stale_in_dagster(dagster, [b.partition for b in batches])
    except DagsterError as exc:
        if not args.dry_run:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        in_dagster = {}
    print(retag.describe(batches, target, in_dagster))
    if args.dry_run or not batches:
        if batches:
            print("dry run: nothing launched")
        return 0
    try:
        backfill = retag.launch(dagster, settings, target, batches)
    except (retag.RetagError, DagsterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"launched backfill {backfill} of {len(batches)} batches: {dagster.url}/runs/b/{backfill}")
    return 0


def run_compare(args) -> int:
    import pyarrow.parquet as pq

    settings = Settings.from_env()
    client = make_client(settings)
    body = read_bytes(client, settings.warehouse_bucket, layout.asset_table_key("tag_quality_history"))
    if body is None:
        print("no tag_quality_history yet: it is materialized after the first batch", file=sys.stderr)
        return 2
    frame = pq.read_table(io.BytesIO(body)).to_pandas()
    if "compared_versions" in frame:
        frame = frame[frame["compared_versions"].notna()]
    if args.manifest:
        frame = frame[frame["partition"].isin(args.manifest)]
    if not len(frame) or "compared_versions" not in frame:
        print("(no batch has been re-tagged by a new model version)")
        return 0
    for row in frame.to_dict("records"):
        print(
            f"{row['partition']} ({row['images']} images): versions {row['compared_versions']}\n"
            f"  top-1 agreement {row['top1_agreement']:.1%}, top-5 agreement {row['top5_agreement']:.1%}, "
            f"confidence shift {row['confidence_shift']:+.3f}\n"
            f"  gained: {row['classes_gained'] or '-'}\n  lost:   {row['classes_lost'] or '-'}"
        )
    return 0


def run_plan(args) -> int:
    if args.sizing:
        print(planning.sizing_table(Settings.from_env()))
        return 0
    if args.images is None:
        print("tagging-platform plan: --images N is required (or --sizing)", file=sys.stderr)
        return 2
    options = planning.planning_options(Settings.from_env())
    given = {name: getattr(args, name) for name in PLAN_SETTINGS}
    options.update({name: value for name, value in given.items() if value is not None})
    if args.tradeoff:
        options.pop("deadline_min")
        print(planning.tradeoff(args.images, args.tradeoff, **options))
        return 0
    result = planning.plan_chunks(args.images, gpus_held=args.gpus_held, **options)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.describe())
    return 0


def upload_batch(
    client, settings: Settings, name: str, images: list[tuple[str, bytes]], model: str | None = None
) -> str:
    """Upload images and a native manifest listing them; returns the manifest's key."""
    image_bucket = settings.allowed_image_prefixes[0].split("/")[0]
    image_prefix = settings.allowed_image_prefixes[0][len(image_bucket) + 1 :]
    uris = []
    for filename, data in images:
        key = f"{image_prefix}{name}/{filename}"
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        client.put_object(Bucket=image_bucket, Key=key, Body=data, ContentType=content_type)
        uris.append(f"s3://{image_bucket}/{key}")
    manifest = {"id": name, "images": uris, **({"model": model} if model else {})}
    key = f"{settings.manifest_prefix}{name}.json"
    client.put_object(Bucket=settings.manifest_bucket, Key=key, Body=json.dumps(manifest, indent=1).encode())
    return key


def run_submit(args) -> int:
    settings = Settings.from_env()
    client = make_client(settings)
    source: Path | None = args.source
    if args.photos:
        images = photos.sample_set(variants_per_photo=args.variants)
        key = upload_batch(client, settings, args.name or "photos", images, args.model)
        print(f"uploaded {len(images)} images")
    elif source.is_dir():
        name = args.name or source.name
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            print(f"error: {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", file=sys.stderr)
            return 2
        key = upload_batch(client, settings, name, [(p.name, p.read_bytes()) for p in files], args.model)
        print(f"uploaded {len(files)} images")
    elif source.is_file():
        key = f"{settings.manifest_prefix}{args.name or source.name}"
        client.put_object(Bucket=settings.manifest_bucket, Key=key, Body=source.read_bytes())
    else:
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    partition = partition_key_for(key, settings.manifest_prefix)
    print(f"submitted s3://{settings.manifest_bucket}/{key} as batch {partition}")
    return 0


def run_dev(args) -> int:
    from tagging_platform.local import LocalPlatform

    platform = LocalPlatform(args.workspace, s3_port=args.s3_port, ui_port=args.port)
    # A terminal's Ctrl-C and a supervisor's SIGTERM both stop dagster dev and the S3 server with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with platform:
        print(f"embedded S3 at {platform.settings.s3_endpoint}")
        print(f"Dagster UI at {platform.ui_url} (DAGSTER_HOME={platform.dagster_home})")
        print("submit a batch with: tagging-platform submit DIR_OR_MANIFEST   (Ctrl-C stops everything)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping")
    return 0


def run_demo(args) -> int:
    from tagging_platform.local import LocalPlatform

    started = time.monotonic()
    # Small chunks so the demo shows the fan-out: several tag_chunk steps for one manifest. The canary's
    # schedule stays stopped: the demo shows one batch, and a canary run would compete with it for the CPU.
    overrides = {
        "TP_MAX_CHUNK_IMAGES": "8",
        "TP_MIN_CHUNK_IMAGES": "1",
        "TP_SENSOR_INTERVAL_S": "2",
        "TP_CANARY_ENABLED": "0",
    }
    with LocalPlatform(args.workspace, settings_overrides=overrides) as platform:
        settings = platform.settings
        print(
            f"embedded S3 at {settings.s3_endpoint}; Dagster at {platform.ui_url}"
            f" (DAGSTER_HOME={platform.dagster_home})"
        )
        images = photos.sample_set(variants_per_photo=args.variants)
        name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        key = upload_batch(platform.s3(), settings, name, images)
        partition = partition_key_for(key, settings.manifest_prefix)
        print(f"uploaded {len(images)} photographs and s3://{settings.manifest_bucket}/{key}; waiting for the sensor")
        seen_status: list[str] = []

        def report(runs: list[dict]) -> None:
            status = runs[0]["status"] if runs else "waiting for the sensor"
            if not seen_status or seen_status[-1] != status:
                seen_status.append(status)
                print(f"  [{time.monotonic() - started:5.0f} s] batch {partition}: {status.lower()}")

        run = platform.wait_for_run(partition, timeout_s=args.timeout, on_wait=report)
        return summarise(platform, run, partition, len(images), started)


def summarise(platform, run: dict, partition: str, expected: int, started: float) -> int:
    """Print what happened and return the exit code: 0 only if every image is accounted for."""
    checks, failures = platform.dagster.run_events(run["runId"])
    print(f"run {run['runId']}: {run['status']} after {time.monotonic() - started:.0f} s")
    for failure in failures:
        print(f"  step {failure['step']} failed: {failure['error'].strip().splitlines()[0]}")
    for check in checks:
        outcome = "passed" if check["success"] else f"FAILED ({check['severity']})"
        print(f"  check {check['checkName']}: {outcome}")
    client = platform.s3()
    settings = platform.settings
    markers = _markers(client, settings, partition)
    if run["status"] != "SUCCESS" or not markers:
        print(f"tagged 0/{expected} images: the run did not publish; see {platform.log_path}")
        return 1
    location, marker = markers[0]
    _print_examples(client, marker)
    accounted = marker["tagged"] + marker["errors"] == expected == marker["images"]
    checks_ok = checks and all(c["success"] for c in checks)
    verdict = (
        "checks passed"
        if checks_ok
        else "checks: " + ", ".join(f"{c['checkName']} failed" for c in checks if not c["success"])
    )
    print(
        f"tagged {marker['tagged']}/{expected} images, {marker['objects']} tag objects published to {location},"
        f" {verdict}"
    )
    blocking_ok = all(c["success"] for c in checks if c["checkName"] == "every_image_accounted_for")
    return 0 if accounted and blocking_ok else 1


def _markers(client, settings: Settings, partition: str) -> list[tuple[str, dict]]:
    return publishing.find_markers(client, settings.output_bucket, f"{settings.output_prefix}{partition}/")


def _print_examples(client, marker: dict, limit: int = 8) -> None:
    for part in marker["parts"][:1]:
        bucket, _ = split_uri(marker["location"])
        lines = client.get_object(Bucket=bucket, Key=part["key"])["Body"].read().splitlines()
        for line in lines[:limit]:
            obj = json.loads(line)
            described = ", ".join(f"{t['name']} {t['confidence']:.2f}" for t in obj.get("tags", [])[:3])
            print(f"  {obj['image'].rsplit('/', 1)[-1]:<22} {described or obj.get('error', '')}")


if __name__ == "__main__":
    sys.exit(main())
