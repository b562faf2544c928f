"""Manifest runs under the k8s deployment on a real Kubernetes API server: K8sRunLauncher starts the run worker as a
Job, k8s_job_executor starts one Job per step, the real scheduler places them (tag_chunk on the tainted GPU node,
two GPUs), the node simulator runs each pod as a local process with the .venv's python."""

from __future__ import annotations

import json
import threading
import time
import uuid

import dagster as dg
import pytest

from tagging_platform.settings import Settings
from tests.conftest import read_published, record_manifest
from tests.k8s.conftest import PodRecorder

pytestmark = [pytest.mark.k8s, pytest.mark.e2e]

GPU = "nvidia.com/gpu"


def local_tag_manifest_job():
    """The same job on the local deployment (multiprocess executor), rebuilt in every step process."""
    from definitions import build_definitions

    return build_definitions(Settings.from_env()).resolve_job_def("tag_manifest")


def published(s3, settings: Settings, partition: str) -> tuple[dict, list[dict]]:
    return read_published(s3, settings.output_bucket, f"{settings.output_prefix}{partition}/")


def comparable(objects: list[dict]) -> dict[str, str]:
    """Published objects by image, keeping what the model decided (not the run, batch or time)."""
    keep = ("etag", "status", "tags", "model", "error")
    return {o["image"].rsplit("/", 1)[-1]: json.dumps({k: o.get(k) for k in keep}, sort_keys=True) for o in objects}


def is_chunk(obj) -> bool:
    return "tag_chunk" in (obj.metadata.labels or {}).get("dagster/op", "")


def oom_kill(core, namespace: str, pod: str) -> None:
    """SIGKILL the pod's container at once, reported as OOMKilled (the node simulator's kill annotation)."""
    core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {"sim.tagging.platform/kill": "OOMKilled"}}})


def kill_a_running_chunk(core, namespace: str, run_id: str, done: threading.Event, killed: dict) -> None:
    """OOM-kill the first tag_chunk pod whose step has started (its log, read through the API server, says so)."""
    while not done.is_set():
        for pod in core.list_namespaced_pod(namespace, label_selector=f"dagster/run-id={run_id}").items:
            if not is_chunk(pod) or pod.status.phase != "Running":
                continue
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace)
            if "STEP_START" in log:
                oom_kill(core, namespace, pod.metadata.name)
                env = {v.name: v.value for v in pod.spec.containers[0].env or []}
                killed.update(pod=pod.metadata.name, step=env["DAGSTER_RUN_STEP_KEY"], log=log)
                return
        time.sleep(0.2)


def test_a_manifest_runs_as_one_job_per_step_with_gpu_chunks_queued_retried_and_identical_to_local(
    k8s_dagster, k8s_api, definitions, registered_instance, s3, settings, photographs, upload_images
):
    core, batch, _ = k8s_api
    uris = upload_images({**photographs, "corrupt.jpg": photographs["coffee.jpg"][:5000]})
    uris.append(uris[0].rsplit("/", 1)[0] + "/missing.jpg")
    chunks = -(-len(uris) // 2)  # chunks of 2 images (TP_MAX_CHUNK_IMAGES)
    assert chunks >= 4  # more chunks than the GPU node's 2 GPUs: some wait
    suffix = uuid.uuid4().hex[:6]
    k8s_partition, local_partition = f"k8s-{suffix}", f"local-{suffix}"
    # Without reuse: earlier tests tagged these photographs, and a chunk served from the reuse index would be
    # over before it could be killed.
    record_manifest(s3, settings, k8s_partition, {"images": uris, "reuse": False})
    record_manifest(s3, settings, local_partition, {"images": uris, "reuse": False})

    k8s = k8s_dagster()
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=k8s.instance).success
    k8s.instance.add_dynamic_partitions("manifests", [k8s_partition])
    recorder = PodRecorder(core, k8s.namespace)
    started = time.monotonic()
    run_id = k8s.launch(k8s_partition)
    done, killed = threading.Event(), {}
    killer = threading.Thread(
        target=kill_a_running_chunk, args=(core, k8s.namespace, run_id, done, killed), daemon=True
    )
    killer.start()
    try:
        run = k8s.wait(run_id, timeout_s=600)
    finally:
        done.set()
        recorder.stop()
    elapsed = time.monotonic() - started
    events = k8s.events(run_id)
    failures = [e.event_specific_data.error.message for e in events if e.is_step_failure]
    assert run.status == dg.DagsterRunStatus.SUCCESS, failures

    # One Job per step (and per retry of a step), plus the run worker's Job.
    jobs = batch.list_namespaced_job(k8s.namespace, label_selector=f"dagster/run-id={run_id}").items
    step_jobs = [j for j in jobs if j.metadata.labels.get("app.kubernetes.io/component") == "step_worker"]
    run_jobs = [j for j in jobs if j.metadata.labels.get("app.kubernetes.io/component") == "run_worker"]
    step_keys = {e.step_key for e in events if e.event_type_value == "STEP_START"}
    retried = {e.step_key for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"}
    assert len(run_jobs) == 1
    assert len(step_jobs) == len(step_keys) + len(retried)
    chunk_keys = {k for k in step_keys if k.startswith("image_tags.tag_chunk[")}
    assert len(chunk_keys) == chunks
    assert {"manifest", "image_tags.plan_chunks", "image_tags.merge_chunks"} <= step_keys

    # tag_chunk Jobs ask for one GPU on the GPU pool (selector + toleration); nothing else asks for a GPU.
    gpu_jobs = []
    for job in step_jobs:
        pod_spec = job.spec.template.spec
        limits = pod_spec.containers[0].resources.limits or {}
        if is_chunk(job):
            gpu_jobs.append(job)
            assert limits.get(GPU) == "1" and (pod_spec.containers[0].resources.requests or {}).get(GPU) == "1"
            assert pod_spec.node_selector == {"tagging.platform/pool": "gpu"}
            assert any(t.key == GPU and t.effect == "NoSchedule" for t in pod_spec.tolerations)
        else:
            assert GPU not in limits and not pod_spec.node_selector
        # Every step pod is hardened (executors.py): non-root, read-only root, no API token.
        assert pod_spec.security_context.run_as_non_root and pod_spec.automount_service_account_token is False
        assert pod_spec.containers[0].security_context.read_only_root_filesystem
    assert len(gpu_jobs) == len(chunk_keys) + len(retried)

    # The real scheduler: GPU pods land on the GPU node, never more than its 2 GPUs at once; the surplus waited.
    ours = {
        name: states
        for name, states in recorder.seen.items()
        if recorder.pods[name].metadata.labels.get("dagster/run-id") == run_id
    }
    chunk_pods = {name: states for name, states in ours.items() if is_chunk(recorder.pods[name])}
    other_pods = {name: states for name, states in ours.items() if not is_chunk(recorder.pods[name])}
    assert len(chunk_pods) == len(gpu_jobs)
    assert {s["node"] for states in chunk_pods.values() for s in states if s["node"]} == {"tp-gpu-node"}
    assert {s["node"] for states in other_pods.values() for s in states if s["node"]} == {"tp-cpu-node"}
    waited = [name for name, states in chunk_pods.items() if any(s["unschedulable"] for s in states)]
    assert waited, "no GPU pod ever waited for a GPU"
    reasons = {s["unschedulable"] for name in waited for s in chunk_pods[name] if s["unschedulable"]}
    assert any(f"Insufficient {GPU}" in r for r in reasons), reasons
    timeline = sorted((s["t"], name, s["phase"]) for name, states in chunk_pods.items() for s in states)
    running, peak = set(), 0
    for _, name, phase in timeline:
        (running.add if phase == "Running" else running.discard)(name)
        peak = max(peak, len(running))
    assert 1 <= peak <= 2

    # The OOM-killed chunk pod failed its Job, the op's retry policy ran the step again in a new Job.
    assert killed, "no tag_chunk pod was killed"
    assert retried == {killed["step"]}
    killed_pod = recorder.pods[killed["pod"]]
    terminated = killed_pod.status.container_statuses[0].state.terminated
    assert killed_pod.status.phase == "Failed" and terminated.reason == "OOMKilled" and terminated.exit_code == 137
    [retried_step] = retried
    assert sum(1 for e in events if e.is_step_success and e.step_key == retried_step) == 1

    # Every image accounted for, once; the tags are the local multiprocess run's, image for image.
    marker, objects = published(s3, settings, k8s_partition)
    assert sorted(o["image"] for o in objects) == sorted(uris)
    assert marker["images"] == len(uris) == marker["tagged"] + marker["errors"]
    assert {o["run_id"] for o in objects} == {run_id}

    registered_instance.add_dynamic_partitions("manifests", [local_partition])
    local = dg.execute_job(
        dg.reconstructable(local_tag_manifest_job),
        instance=registered_instance,
        tags={"dagster/partition": local_partition},
    )
    assert local.success
    _, local_objects = published(s3, settings, local_partition)

    assert comparable(objects) == comparable(local_objects)
    print(
        f"\nk8s run: {elapsed:.0f} s, {len(jobs)} Jobs ({len(run_jobs)} run worker, {len(step_jobs)} steps), "
        f"{len(gpu_jobs)} GPU pods, {len(waited)} waited for a GPU, peak {peak} GPU pods running, retried {retried}"
    )


def test_a_step_pod_that_cannot_be_scheduled_fails_the_run_with_the_schedulers_reason(
    k8s_dagster, k8s_api, definitions, s3, settings, photographs, upload_images
):
    core, batch, _ = k8s_api
    uris = upload_images(dict(list(photographs.items())[:2]))
    partition = f"unschedulable-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris, "reuse": False})
    k8s = k8s_dagster(TP_STEP_UNSCHEDULABLE_TIMEOUT_S="15", TP_MAX_CHUNK_IMAGES="2")
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=k8s.instance).success
    k8s.instance.add_dynamic_partitions("manifests", [partition])
    # The GPU pool is cordoned (at its quota, or its instance type unavailable): no tag_chunk pod can ever land.
    core.patch_node("tp-gpu-node", {"spec": {"unschedulable": True}})
    try:
        run_id = k8s.launch(partition)
        run = k8s.wait(run_id, timeout_s=240)
    finally:
        core.patch_node("tp-gpu-node", {"spec": {"unschedulable": False}})
    assert run.status == dg.DagsterRunStatus.FAILURE
    events = k8s.events(run_id)
    [failure] = [e for e in events if e.is_step_failure]
    assert failure.step_key == "image_tags.tag_chunk[chunk_00000]"
    message = failure.event_specific_data.error.message
    assert "could not be scheduled" in message and "limit 15 s" in message
    assert "node(s) were unschedulable" in message, message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in events)  # waiting again would not help
    records = [r for r in k8s.instance.all_logs(run_id) if r.dagster_event is not None]
    launched_at = next(r.timestamp for r in records if r.dagster_event.step_key == failure.step_key)
    failed_at = next(r.timestamp for r in records if r.dagster_event.is_step_failure)
    # The limit runs from the pod's creation, a moment before the step's first event is recorded.
    assert 15 - 2 <= failed_at - launched_at <= 15 + 10 + 15  # the limit, one health-check interval, slack
    jobs = batch.list_namespaced_job(k8s.namespace, label_selector=f"dagster/run-id={run_id}").items
    assert not [j for j in jobs if is_chunk(j)], "the unschedulable step's Job was left behind"


def test_a_cpu_only_model_gets_cpu_pods_without_a_gpu_request(
    k8s_dagster, k8s_api, definitions, s3, settings, photographs, upload_images
):
    core, batch, _ = k8s_api
    uris = upload_images(dict(list(photographs.items())[:4]))
    partition = f"cpu-model-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris, "model": "efficientnet_lite0", "reuse": False})
    k8s = k8s_dagster()
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=k8s.instance).success
    k8s.instance.add_dynamic_partitions("manifests", [partition])
    recorder = PodRecorder(core, k8s.namespace)
    try:
        run = k8s.wait(k8s.launch(partition), timeout_s=300)
    finally:
        recorder.stop()
    assert run.status == dg.DagsterRunStatus.SUCCESS
    jobs = batch.list_namespaced_job(k8s.namespace, label_selector=f"dagster/run-id={run.run_id}").items
    chunk_jobs = [j for j in jobs if is_chunk(j)]
    assert len(chunk_jobs) == 2  # 4 images in chunks of 2
    for job in chunk_jobs:
        pod_spec = job.spec.template.spec
        resources = pod_spec.containers[0].resources
        assert GPU not in (resources.limits or {}) and GPU not in (resources.requests or {})
        assert resources.requests["memory"] == "2Gi"  # efficientnet_lite0's profile
        assert not pod_spec.node_selector and not any(t.key == GPU for t in pod_spec.tolerations or [])
    ours = [
        name
        for name, pod in recorder.pods.items()
        if is_chunk(pod) and pod.metadata.labels.get("dagster/run-id") == run.run_id
    ]
    nodes = {s["node"] for name in ours for s in recorder.seen[name] if s["node"]}
    assert nodes == {"tp-cpu-node"}
    _, objects = published(s3, settings, partition)
    assert {o["model"]["name"] for o in objects} == {"efficientnet_lite0"} and len(objects) == len(uris)


# --- Reuse decided at planning and checkpointed chunks, on the cluster (issue 17) --------------------------------


def unique(jpeg: bytes) -> bytes:
    """The same picture under an ETag no other test has tagged (decoders stop at the JPEG's end marker)."""
    return jpeg + b"\0" + uuid.uuid4().bytes


def tag_locally(definitions, instance, s3, settings, uris: list[str], **manifest) -> tuple[str, str]:
    """A whole run of tag_manifest in this process (no pod): (partition, run id); it fills the reuse index."""
    partition = f"local-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris, **manifest})
    instance.add_dynamic_partitions("manifests", [partition])
    result = definitions.resolve_job_def("tag_manifest").execute_in_process(instance=instance, partition_key=partition)
    assert result.success
    return partition, result.run_id


def run_on_cluster(k8s, core, partition: str, timeout_s: float = 300, during=None):
    """Launch a manifest's run on the cluster and wait for it, recording every pod; (run, its pods by name).

    `during(run_id)` runs while the run does (a fault to inject)."""
    recorder = PodRecorder(core, k8s.namespace)
    try:
        run_id = k8s.launch(partition)
        if during is not None:
            during(run_id)
        run = k8s.wait(run_id, timeout_s=timeout_s)
    finally:
        recorder.stop()
    pods = {name: pod for name, pod in recorder.pods.items() if pod.metadata.labels.get("dagster/run-id") == run.run_id}
    return run, pods


def step_jobs_by_label(batch, namespace: str, run_id: str) -> tuple[list, list]:
    """The run's step Jobs, as (tag_chunk Jobs, the others), told apart by the step's `dagster/op` label."""
    jobs = batch.list_namespaced_job(namespace, label_selector=f"dagster/run-id={run_id}").items
    steps = [j for j in jobs if j.metadata.labels.get("app.kubernetes.io/component") == "step_worker"]
    return [j for j in steps if is_chunk(j)], [j for j in steps if not is_chunk(j)]


def test_a_manifest_whose_images_were_all_tagged_before_starts_no_gpu_pod_and_publishes_its_tags(
    k8s_dagster, k8s_api, definitions, registered_instance, s3, settings, photographs, upload_images
):
    core, batch, _ = k8s_api
    pictures = {n: unique(photographs[n]) for n in ("chelsea.jpg", "coffee.jpg")}
    seen_partition, seen_run = tag_locally(definitions, registered_instance, s3, settings, upload_images(pictures))
    # The same bytes under other keys: reuse goes by ETag and model version, not by name.
    uris = upload_images(pictures)
    partition = f"all-seen-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris})
    k8s = k8s_dagster()
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=k8s.instance).success
    k8s.instance.add_dynamic_partitions("manifests", [partition])

    run, pods = run_on_cluster(k8s, core, partition)
    events = k8s.events(run.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, [
        e.event_specific_data.error.message for e in events if e.is_step_failure
    ]

    # No tag_chunk step, so no GPU Job and no GPU pod; the run's other steps did run as pods (the count can see them).
    chunk_jobs, other_jobs = step_jobs_by_label(batch, k8s.namespace, run.run_id)
    chunk_pods = [name for name, pod in pods.items() if is_chunk(pod)]
    assert (len(chunk_jobs), len(chunk_pods)) == (0, 0)
    step_keys = {e.step_key for e in events if e.event_type_value == "STEP_START"}
    assert not any("tag_chunk" in key for key in step_keys)
    assert {"manifest", "image_tags.plan_chunks", "image_tags.merge_chunks"} <= step_keys
    assert len(other_jobs) == len(step_keys)  # one Job per step that ran
    assert not any(GPU in (p.spec.containers[0].resources.limits or {}) for p in pods.values())

    # Published all the same: every image, with the tags of the run that first tagged it.
    _, objects = published(s3, settings, partition)
    _, seen = published(s3, settings, seen_partition)
    assert sorted(o["image"] for o in objects) == sorted(uris)
    assert comparable(objects) == comparable(seen)
    assert {o["reused_from"]["run_id"] for o in objects} == {seen_run}
    print(f"\nall tagged before: {len(chunk_jobs)} tag_chunk Jobs, {len(chunk_pods)} GPU pods, {len(pods)} pods in all")


def test_a_manifest_with_one_of_two_chunks_seen_before_starts_one_gpu_pod(
    k8s_dagster, k8s_api, definitions, registered_instance, s3, settings, photographs, upload_images
):
    core, batch, _ = k8s_api
    seen_pictures = {n: unique(photographs[n]) for n in ("chelsea.jpg", "coffee.jpg")}
    _, seen_run = tag_locally(definitions, registered_instance, s3, settings, upload_images(seen_pictures))
    # Two chunks of two (TP_MAX_CHUNK_IMAGES) without reuse: the first chunk's pictures were tagged before.
    seen = upload_images(seen_pictures)
    new = upload_images({n: unique(photographs[n]) for n in ("rocket.jpg", "astronaut.jpg")})
    partition = f"half-seen-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": [*seen, *new]})
    k8s = k8s_dagster()
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=k8s.instance).success
    k8s.instance.add_dynamic_partitions("manifests", [partition])

    run, pods = run_on_cluster(k8s, core, partition)
    events = k8s.events(run.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, [
        e.event_specific_data.error.message for e in events if e.is_step_failure
    ]

    chunk_jobs, _ = step_jobs_by_label(batch, k8s.namespace, run.run_id)
    chunk_pods = [name for name, pod in pods.items() if is_chunk(pod)]
    assert (len(chunk_jobs), len(chunk_pods)) == (1, 1)
    [output] = [
        e.event_specific_data.metadata
        for e in events
        if e.event_type_value == "STEP_OUTPUT" and "tag_chunk" in e.step_key
    ]
    assert (output["images"].value, output["tagged_this_attempt"].value) == (2, 2)

    _, objects = published(s3, settings, partition)
    by_uri = {o["image"]: o for o in objects}
    assert sorted(by_uri) == sorted([*seen, *new])
    assert all(by_uri[u]["reused_from"]["run_id"] == seen_run for u in seen)
    assert all("reused_from" not in by_uri[u] and by_uri[u]["run_id"] == run.run_id for u in new)
    print(
        f"\nhalf tagged before: {len(chunk_jobs)} tag_chunk Jobs, {len(chunk_pods)} GPU pods, {len(pods)} pods in all"
    )


def test_a_tag_chunk_pod_killed_after_its_first_checkpoint_is_retried_in_a_new_pod_tagging_only_the_rest(
    k8s_dagster, k8s_api, definitions, registered_instance, s3, settings, photographs, upload_images
):
    from tests.faults.conftest import image_key_matcher
    from tests.faults.s3_proxy import S3FaultProxy

    core, batch, _ = k8s_api
    uris = upload_images({n: unique(photographs[n]) for n in ("chelsea.jpg", "coffee.jpg")})
    partition = f"checkpoint-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris, "reuse": False})
    # The pods reach S3 through a proxy that parks the chunk's second image: the first is tagged and committed
    # (a row per batch, a checkpoint per row) while the second is held, and the pod is killed then.
    proxy = S3FaultProxy(int(settings.s3_endpoint.rsplit(":", 1)[1])).start()
    reached, release = proxy.hold(image_key_matcher(uris[1:2]))
    k8s = k8s_dagster(TP_S3_ENDPOINT=proxy.endpoint, TP_BATCH_SIZE="1", TP_CHECKPOINT_IMAGES="1")
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=k8s.instance).success
    k8s.instance.add_dynamic_partitions("manifests", [partition])
    killed = {}

    def kill_after_the_first_checkpoint(run_id: str) -> None:
        deadline = time.monotonic() + 300
        while not (reached.is_set() and chunk_parts(s3, settings, partition)):
            assert time.monotonic() < deadline, "the chunk never committed its first image"
            time.sleep(0.2)
        [pod] = [
            p
            for p in core.list_namespaced_pod(k8s.namespace, label_selector=f"dagster/run-id={run_id}").items
            if is_chunk(p) and p.status.phase == "Running"
        ]
        killed.update(pod=pod.metadata.name, parts=chunk_parts(s3, settings, partition))
        oom_kill(core, k8s.namespace, pod.metadata.name)
        # Released only once the pod is dead, so the killed attempt cannot fetch and commit the second image.
        while pod_phase(core, k8s.namespace, pod.metadata.name) == "Running":
            time.sleep(0.2)
        release.set()

    try:
        run, pods = run_on_cluster(k8s, core, partition, timeout_s=420, during=kill_after_the_first_checkpoint)
    finally:
        release.set()
        proxy.stop()
    events = k8s.events(run.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, [
        e.event_specific_data.error.message for e in events if e.is_step_failure
    ]

    # The killed pod failed its Job; the retry policy ran the step again in a new Job and pod.
    step = "image_tags.tag_chunk[chunk_00000]"
    assert [e.step_key for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"] == [step]
    chunk_jobs, _ = step_jobs_by_label(batch, k8s.namespace, run.run_id)
    chunk_pods = sorted(name for name, pod in pods.items() if is_chunk(pod))
    assert len(chunk_jobs) == len(chunk_pods) == 2 and killed["pod"] in chunk_pods
    terminated = pods[killed["pod"]].status.container_statuses[0].state.terminated
    assert terminated.reason == "OOMKilled" and terminated.exit_code == 137

    # Each attempt: the killed one committed the first image in its own part; the retry's step metadata says it
    # resumed from that part and tagged only the other image, and no part of the retry holds a committed image.
    committed = {p for positions in killed["parts"].values() for p in positions}
    killed_attempts = {attempt_of(key) for key in killed["parts"]}
    retry_parts = {
        k: v for k, v in chunk_parts(s3, settings, partition).items() if attempt_of(k) not in killed_attempts
    }
    retagged = sum(len(set(positions) & committed) for positions in retry_parts.values())
    [output] = [
        e.event_specific_data.metadata for e in events if e.event_type_value == "STEP_OUTPUT" and e.step_key == step
    ]
    assert committed == {0} and len(killed_attempts) == 1
    assert output["attempt"].value == 1
    assert (output["resumed"].value, output["tagged_this_attempt"].value) == (1, 1)
    assert retagged == 0 and {p for positions in retry_parts.values() for p in positions} == {1}

    # The published tags are an uninterrupted run's (the same batch size: a row per batch), image for image.
    _, objects = published(s3, settings, partition)
    assert sorted(o["image"] for o in objects) == sorted(uris)
    from definitions import build_definitions

    uninterrupted = build_definitions(settings.replace(batch_size=1))
    local_partition, _ = tag_locally(uninterrupted, registered_instance, s3, settings, uris, reuse=False)
    _, local_objects = published(s3, settings, local_partition)
    assert comparable(objects) == comparable(local_objects)
    print(
        f"\nkilled after a checkpoint: {len(chunk_pods)} tag_chunk pods, {len(committed)} image committed before the "
        f"kill, retry resumed {output['resumed'].value} and tagged {output['tagged_this_attempt'].value}, "
        f"re-tagged after the kill: {retagged}"
    )


def pod_phase(core, namespace: str, name: str) -> str | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod(name, namespace).status.phase
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def chunk_parts(s3, settings: Settings, partition: str) -> dict[str, list[int]]:
    """{part key: positions} of the batch's committed chunk parts in the warehouse."""
    import io

    import pyarrow.parquet as pq

    bucket = settings.warehouse_bucket
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"chunks/partition={partition}/").get("Contents", [])
    return {
        o["Key"]: pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()))
        .column("position")
        .to_pylist()
        for o in listed
        if o["Key"].rsplit("/", 1)[-1].startswith("part-")
    }


def attempt_of(part_key: str) -> str:
    """The attempt that wrote a part (part-<first position>-<attempt>.parquet)."""
    return part_key.rsplit("-", 1)[-1].removesuffix(".parquet")
