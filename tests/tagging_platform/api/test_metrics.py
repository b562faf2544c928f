"""The API's Prometheus metrics at /metrics, as Prometheus scrapes them."""

import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(api) -> dict[tuple[str, tuple], float]:
    text = requests.get(api.url + "/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_requests_by_route_and_images_tagged_are_counted(http, api, photographs):
    before = scrape(api)
    ok = ("tagging_api_images_total", (("model", "mobilenet_v2"), ("status", "ok")))
    status_route = (
        "tagging_api_requests_total",
        (("method", "GET"), ("route", "/v1/batches/{batch_id}"), ("status", "404")),
    )

    assert http("POST", "/v1/tag", files={"image": ("coffee.jpg", photographs["coffee.jpg"])}).status_code == 200
    assert http("GET", "/v1/batches/no-such-batch").status_code == 404
    after = scrape(api)

    assert after[ok] == before.get(ok, 0) + 1
    assert after[status_route] == before.get(status_route, 0) + 1  # the route's template, never the batch id
    assert not any("no-such-batch" in str(labels) for _, labels in after)
    assert any(name == "tagging_api_request_seconds_count" for name, _ in after)
    assert any(
        name == "tagging_api_images_per_second_count" and dict(labels)["model"] == "mobilenet_v2"
        for name, labels in after
    )
    assert any(name == "tagging_api_model_load_seconds_count" for name, _ in after)
