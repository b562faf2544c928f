"""The tagging steps' figures, pushed to a real Pushgateway and read back as Prometheus scrapes them."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tagging_platform.embedded import free_port
from tagging_platform.engine import ChunkStats
from tagging_platform.metrics import (
    CANARY_JOB,
    EVENTS_JOB,
    chunk_pusher,
    delete_chunks,
    push_bad_event_records,
    push_canary,
)


def scrape(gateway: str, batch: str = "", job: str = "") -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("instance",)))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if (batch and sample.labels.get("batch") == batch) or (job and sample.labels.get("job") == job)
    }


def test_a_chunk_pushes_its_progress_then_its_totals(pushgateway):
    push = chunk_pusher(pushgateway, "batch-metrics", 3, "mobilenet_v2", "sha256:abc")
    push(ChunkStats(images=100, tagged=40, errors=2, model_load_s=1.5, wall_s=10.0))
    labels = (
        ("batch", "batch-metrics"),
        ("chunk", "3"),
        ("job", "tag_chunk"),
        ("model", "mobilenet_v2"),
        ("version", "sha256:abc"),
    )
    running = scrape(pushgateway, "batch-metrics")
    assert running[("tagging_chunk_images", tuple(sorted((*labels, ("status", "ok")))))] == 40
    assert running[("tagging_chunk_done", labels)] == 0

    push(ChunkStats(images=100, tagged=97, errors=3, model_load_s=1.5, inference_s=4.0, wall_s=20.0), done=True)
    done = scrape(pushgateway, "batch-metrics")
    assert done[("tagging_chunk_images", tuple(sorted((*labels, ("status", "ok")))))] == 97
    assert done[("tagging_chunk_images", tuple(sorted((*labels, ("status", "error")))))] == 3
    assert done[("tagging_chunk_images_per_second", labels)] == 5.0
    assert done[("tagging_model_load_seconds", labels)] == 1.5
    assert done[("tagging_chunk_stage_seconds", tuple(sorted((*labels, ("stage", "inference")))))] == 4.0
    assert done[("tagging_chunk_done", labels)] == 1


def test_a_merged_batchs_chunk_groups_are_deleted_and_other_batches_kept(pushgateway):
    for batch in ("batch-merged", "batch-running"):
        for chunk in (0, 1):
            chunk_pusher(pushgateway, batch, chunk, "mobilenet_v2", "sha256:abc")(
                ChunkStats(images=2, tagged=2), done=True
            )
    assert {dict(key)["chunk"] for _, key in scrape(pushgateway, "batch-merged")} == {"0", "1"}
    delete_chunks(pushgateway, "batch-merged", [0, 1])
    assert scrape(pushgateway, "batch-merged") == {}
    assert {dict(key)["chunk"] for _, key in scrape(pushgateway, "batch-running")} == {"0", "1"}


def test_a_gateway_that_is_down_never_fails_the_chunk(caplog):
    push = chunk_pusher(f"http://127.0.0.1:{free_port()}", "batch-down", 0, "m", "sha256:0")
    push(ChunkStats(images=1, tagged=1), done=True)
    assert "could not push metrics" in caplog.text


def test_the_canary_pushes_its_result_and_when_it_ran_replacing_the_previous_one(pushgateway):
    push_canary(
        pushgateway, passed=True, images=5, failed=0, model="mobilenet_v2", version="sha256:old", at=1700000000.0
    )
    push_canary(
        pushgateway, passed=False, images=5, failed=2, model="mobilenet_v2", version="sha256:new", at=1700001800.0
    )
    labels = (("job", CANARY_JOB), ("model", "mobilenet_v2"), ("version", "sha256:new"))
    pushed = scrape(pushgateway, job=CANARY_JOB)
    assert pushed[("tagging_canary_last_run_timestamp_seconds", labels)] == 1700001800.0
    assert pushed[("tagging_canary_passed", labels)] == 0
    assert pushed[("tagging_canary_images", tuple(sorted((*labels, ("result", "fail")))))] == 2
    assert pushed[("tagging_canary_images", tuple(sorted((*labels, ("result", "pass")))))] == 3
    # One group: the earlier push (another model version) is gone, so "the canary" is one series per figure.
    assert not any(dict(key).get("version") == "sha256:old" for _, key in pushed)


def test_the_events_sensor_pushes_its_count_of_malformed_records(pushgateway):
    push_bad_event_records(pushgateway, 3)
    assert scrape(pushgateway, job=EVENTS_JOB)[("tagging_event_bad_records_total", (("job", EVENTS_JOB),))] == 3
