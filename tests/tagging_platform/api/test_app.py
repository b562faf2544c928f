"""Every endpoint over real HTTP: authentication, submission and its validation, status, tagging, size limits."""

from __future__ import annotations

import gzip
import json

import pytest

from tagging_platform.manifests import partition_key_for
from tests.tagging_platform.api.conftest import MAX_BODY


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return body["error"]


@pytest.fixture
def images(customer_images, photographs) -> list[str]:
    return customer_images(dict(list(photographs.items())[:2]))


# --- health, authentication, models ------------------------------------------------------------------------


def test_health_needs_no_key(http):
    assert http("GET", "/healthz", as_=None).json()["status"] == "ok"
    ready = http("GET", "/readyz", as_=None)
    assert ready.status_code == 200 and ready.json()["checks"]["s3"] == "ok"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/batches", "/v1/batches/anything"])
def test_a_missing_key_is_401(http, path):
    response = http("GET", path, as_=None)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["wrong", "tp_acme_not-the-secret", "tp_nobody_abcdef", "tp_ACME_x", "tp_" + "a" * 300])
def test_a_wrong_key_is_401(http, key):
    response = http("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_keys_are_accepted_as_bearer_or_x_api_key_and_stored_hashed(http, keys, s3, api_settings):
    assert http("GET", "/v1/models", as_=None, headers={"X-API-Key": keys["globex"]}).status_code == 200
    assert http("GET", "/v1/models", as_="globex").status_code == 200
    stored = s3.get_object(Bucket=api_settings.warehouse_bucket, Key="api/customers/acme/customer.json")["Body"].read()
    assert keys["acme"].encode() not in stored
    assert json.loads(stored)["output_prefixes"] == ["s3://tags/acme/"]


def test_models_lists_the_registered_default(http, model_ref):
    listed = http("GET", "/v1/models").json()["models"]
    default = next(m for m in listed if m["name"] == "mobilenet_v2")
    assert default["version"] == model_ref.version
    assert default["default"] is True and default["num_classes"] == 1000


# --- submitting batches --------------------------------------------------------------------------------------


def test_submit_writes_the_manifest_where_the_sensor_looks(http, images, s3, api_settings, model_ref):
    response = http("POST", "/v1/batches", json={"images": images, "model": "mobilenet_v2", "id": "order-7"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    batch_id = accepted["batch_id"]
    assert accepted["state"] == "queued" and accepted["images"] == 2
    assert response.headers["Location"] == accepted["status_url"]
    assert accepted["status_url"].endswith(f"/v1/batches/{batch_id}")
    assert accepted["model"] == {"name": "mobilenet_v2", "version": model_ref.version}
    assert accepted["output"] == "s3://tags/acme/"
    assert accepted["result_location"] == f"s3://tags/acme/{batch_id}/mobilenet_v2/{model_ref.short_version}/"
    # Under the customer's own sub-prefix of the manifest prefix; the sensor names the partition the same way.
    bucket, key = accepted["manifest"].removeprefix("s3://").split("/", 1)
    assert bucket == api_settings.manifest_bucket and key.startswith(f"{api_settings.manifest_prefix}acme/")
    assert key.endswith(".json") and partition_key_for(key, api_settings.manifest_prefix) == batch_id
    written = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert written == {
        "images": images,
        "output": "s3://tags/acme/",
        "model": f"mobilenet_v2@{model_ref.version}",  # pinned to the version validated at submission
        "id": "order-7",
    }
    status = http("GET", f"/v1/batches/{batch_id}")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["state"] == "queued" and body["run"] is None and body["progress"] == 0.0
    assert body["counts"] == {"images": 2, "tagged": 0, "errors": 0}
    assert body["reference"] == "order-7"


def test_submit_reads_a_manifest_from_s3_in_any_format(http, images, s3):
    lines = "".join(json.dumps({"source-ref": uri}) + "\n" for uri in images).encode()
    s3.put_object(Bucket="images", Key="acme/manifests/batch.jsonl.gz", Body=gzip.compress(lines))
    response = http(
        "POST",
        "/v1/batches",
        json={"manifest": "s3://images/acme/manifests/batch.jsonl.gz", "output": "s3://tags/acme/x"},
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["images"] == 2 and accepted["output"] == "s3://tags/acme/x/"
    bucket, key = accepted["manifest"].removeprefix("s3://").split("/", 1)
    written = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert written == {"images": images, "output": "s3://tags/acme/x/"}  # the default model is not pinned


def test_submit_carries_the_output_format_and_detect_labels_options_into_the_manifest(http, images, s3):
    publishing = {"output_format": "rekognition", "max_labels": 3, "min_confidence": 20.0}
    response = http("POST", "/v1/batches", json={"images": images, **publishing})
    assert response.status_code == 202, response.text
    bucket, key = response.json()["manifest"].removeprefix("s3://").split("/", 1)
    written = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert {name: written[name] for name in publishing} == publishing


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"images": ["s3://images/a.jpg"], "output_format": "csv"}, "invalid_manifest", 'field "output_format": csv'),
        ({"images": ["s3://images/a.jpg"], "min_confidence": 101}, "invalid_request", "min_confidence"),
        (
            {"images": ["s3://other/a.jpg"]},
            "invalid_manifest",
            "entry 1: s3://other/a.jpg is outside the allowed image",
        ),
        (
            {"images": ["s3://images/acme/a.jpg", "s3://images/acme/a.jpg"]},
            "invalid_manifest",
            "entry 2 repeats entry 1",
        ),
        ({"images": []}, "invalid_manifest", "lists no images"),
        ({"images": ["s3://images/acme/a.jpg", 7]}, "invalid_manifest", "entry 2: expected an s3:// URI string"),
        (
            {"images": ["s3://images/acme/a.jpg"], "model": "nonexistent"},
            "unknown_model",
            "unknown model 'nonexistent'",
        ),
        ({"images": ["s3://images/acme/a.jpg"], "model": "Bad Name!"}, "invalid_manifest", 'field "model"'),
        (
            {"images": ["s3://images/acme/a.jpg"], "model": "mobilenet_v2@0123456789abcdef"},
            "unknown_model",
            "unknown version",
        ),
        ({}, "invalid_request", "exactly one of"),
        (
            {"images": ["s3://images/acme/a.jpg"], "manifest": "s3://images/acme/m.json"},
            "invalid_request",
            "exactly one of",
        ),
        ({"images": ["s3://images/acme/a.jpg"], "colour": "red"}, "invalid_request", "colour"),
        ({"images": "s3://images/acme/a.jpg"}, "invalid_request", "images"),
        ({"manifest": "s3://images/acme/missing.json"}, "manifest_not_found", "does not exist"),
        ({"manifest": "https://example.com/m.json"}, "invalid_manifest", "not an s3:// URI"),
        ({"images": ["s3://images/acme/a.jpg"], "output": "s3://tags/acme/../globex/"}, "invalid_manifest", '".."'),
    ],
)
def test_an_invalid_submission_is_422_naming_the_problem(http, body, code, message):
    response = http("POST", "/v1/batches", json=body)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == code
    assert message in error["message"]


def test_a_body_that_is_not_json_is_422(http):
    response = http("POST", "/v1/batches", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"images": ["s3://images/acme/a.jpg"], "output": "s3://tags/globex/"}, "output_forbidden"),
        ({"images": ["s3://images/acme/a.jpg"], "output": "s3://tags/acme-evil/"}, "output_forbidden"),
        ({"images": ["s3://images/acme/a.jpg"], "output": "s3://tags/"}, "output_forbidden"),
        ({"images": ["s3://images/acme/a.jpg"], "output": "s3://warehouse/"}, "output_forbidden"),
        ({"manifest": "s3://warehouse/api/customers/globex/customer.json"}, "manifest_forbidden"),
    ],
)
def test_outputs_and_manifests_outside_the_customers_locations_are_403(http, body, code):
    response = http("POST", "/v1/batches", json=body)
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == code


def test_a_customer_restricted_to_image_prefixes_cannot_tag_other_images(api, api_settings, s3, keys):
    import requests

    from tagging_platform.api.keys import CustomerStore

    key, _ = CustomerStore(s3, api_settings).create("initech", image_prefixes=["s3://images/initech/"], rotate=True)
    headers = {"X-API-Key": key}
    refused = requests.post(f"{api.url}/v1/batches", json={"images": ["s3://images/acme/a.jpg"]}, headers=headers)
    assert refused.status_code == 403 and error_of(refused)["code"] == "image_forbidden"
    accepted = requests.post(f"{api.url}/v1/batches", json={"images": ["s3://images/initech/a.jpg"]}, headers=headers)
    assert accepted.status_code == 202, accepted.text


def test_a_customer_sees_only_its_own_batches(http, images, customer_images, photographs):
    mine = http("POST", "/v1/batches", json={"images": images}).json()["batch_id"]
    their_images = customer_images(dict(list(photographs.items())[:2]), "globex")
    theirs = http("POST", "/v1/batches", as_="globex", json={"images": their_images}).json()["batch_id"]
    assert mine.startswith("acme-") and theirs.startswith("globex-")
    assert http("GET", f"/v1/batches/{mine}").status_code == 200
    other = http("GET", f"/v1/batches/{theirs}")
    assert other.status_code == 404 and error_of(other)["code"] == "batch_not_found"
    assert http("GET", f"/v1/batches/{mine}", as_="globex").status_code == 404
    listed = [b["batch_id"] for b in http("GET", "/v1/batches").json()["batches"]]
    assert mine in listed and theirs not in listed
    assert all(b.startswith("acme-") for b in listed)


@pytest.mark.parametrize("batch_id", ["does-not-exist", "..%2F..%2Fcustomer", "a" * 300])
def test_an_unknown_batch_is_404(http, batch_id):
    response = http("GET", f"/v1/batches/{batch_id}")
    assert response.status_code == 404
    assert error_of(response)["code"] in ("batch_not_found", "not_found")


# --- size limits and errors ----------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413(http):
    big = {"images": [f"s3://images/acme/{i:08d}-{'x' * 100}.jpg" for i in range(MAX_BODY // 100)]}
    response = http("POST", "/v1/batches", json=big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_a_streamed_body_over_the_limit_is_413(http):
    def chunks():
        yield b'{"images": ["'
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536
        yield b'"]}'

    response = http("POST", "/v1/batches", data=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_unknown_routes_and_methods_answer_in_the_error_shape(http):
    assert error_of(http("GET", "/v2/nothing"))["code"] == "not_found"
    response = http("DELETE", "/v1/models")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


# --- synchronous tagging -------------------------------------------------------------------------------------


def test_tag_one_image(http, photographs, model_ref):
    response = http("POST", "/v1/tag?model=mobilenet_v2", files={"image": ("chelsea.jpg", photographs["chelsea.jpg"])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "mobilenet_v2", "version": model_ref.version}
    [result] = body["results"]
    assert result["filename"] == "chelsea.jpg" and result["status"] == "ok"
    assert result["top_tag"] in ("tabby", "tiger cat", "Egyptian cat", "tiger", "lynx")
    assert result["tags"][0]["name"] == result["top_tag"] and 0 < result["tags"][0]["confidence"] <= 1
    assert all(set(t) == {"name", "confidence", "parents"} for t in result["tags"])


def test_tag_a_few_images_with_the_default_model(http, photographs, api):
    files = [("image", (name, data)) for name, data in list(photographs.items())[:3]]
    response = http("POST", "/v1/tag", files=files)
    assert response.status_code == 200, response.text
    assert [r["filename"] for r in response.json()["results"]] == [name for _, (name, _) in files]
    assert api.app.state.models.loaded() == [f"mobilenet_v2@{response.json()['model']['version']}"]


def test_tag_refuses_what_it_cannot_tag(http, photographs):
    not_an_image = http("POST", "/v1/tag", files={"image": ("notes.txt", b"hello")})
    assert not_an_image.status_code == 422
    error = error_of(not_an_image)
    assert error["code"] == "invalid_image" and "notes.txt" in error["message"]
    unknown = http("POST", "/v1/tag?model=nonexistent", files={"image": ("a.jpg", photographs["chelsea.jpg"])})
    assert unknown.status_code == 422 and error_of(unknown)["code"] == "unknown_model"
    too_many = http("POST", "/v1/tag", files=[("image", (f"{i}.jpg", b"x")) for i in range(4)])
    assert too_many.status_code == 413 and error_of(too_many)["code"] == "too_many_images"
    missing = http("POST", "/v1/tag", files={"picture": ("a.jpg", b"x")})
    assert missing.status_code == 422 and error_of(missing)["code"] == "invalid_request"
    too_big = http("POST", "/v1/tag", files={"image": ("big.jpg", b"x" * (MAX_BODY + 1))})
    assert too_big.status_code == 413
    assert http("POST", "/v1/tag", as_=None, files={"image": ("a.jpg", b"x")}).status_code == 401
