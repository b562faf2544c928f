"""What a hostile or careless client tried against the API (issue 21), each probe a test that fails on the defect.

Every probe runs over real HTTP against the session's API (uvicorn, the embedded S3 server, a real Dagster
webserver); the memory probe is test_memory.py, the generated negative cases test_schemathesis.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tagging_platform.api.errors import ApiError, ErrorCode
from tagging_platform.api.keys import CustomerStore
from tagging_platform.api.memory import PixelBudget
from tagging_platform.settings import PROCESS_ENV
from tests.api_fixtures import ApiServer
from tests.conftest import REPO

SECRET = "SECRET-LINE-2 token=abc123"


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


# --- 1. memory -------------------------------------------------------------------------------------------------


def test_an_image_over_the_pixel_limit_is_413_from_its_header(http, api, api_settings):
    side = int(api_settings.api_max_tag_pixels**0.5) + 1  # a few KB on the wire, one pixel too many
    budget = api.app.state.models.budget
    response = http("POST", "/v1/tag", files={"image": ("huge.png", _png(side, side))})
    assert response.status_code == 413, response.text
    error = error_of(response)
    assert error["code"] == "image_too_large" and f"{side}x{side}" in error["message"]
    assert str(api_settings.api_max_tag_pixels) in error["message"]
    assert budget.in_use == 0  # refused before it took any of the budget


def test_the_pixel_budget_is_shared_and_never_exceeded():
    budget = PixelBudget(100, wait_s=30)
    inside, most = [0], [0]
    lock = threading.Lock()

    def decode(pixels: int) -> None:
        with budget.reserve(pixels):
            with lock:
                inside[0] += pixels
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= pixels

    threads = [threading.Thread(target=decode, args=(60,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 60 and budget.peak == 60 and budget.in_use == 0  # one 60-pixel image at a time


def test_a_full_budget_answers_busy_after_its_wait():
    budget = PixelBudget(100, wait_s=0.2)
    with budget.reserve(100), pytest.raises(ApiError) as refused, budget.reserve(1):
        pass
    assert refused.value.status == 503 and refused.value.code == ErrorCode.BUSY


_ALLOCATE_AND_FREE = """
import sys
from tagging_platform.api.memory import give_memory_back

def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])

if sys.argv[1] == "api":
    give_memory_back()
buffers = [bytearray(2 * 1024 * 1024) for _ in range(150)]  # 300 MiB, the size of one large decoded image
high = rss()
del buffers
print(high, rss())
"""


@pytest.mark.parametrize("process", ["api", "step"])
def test_the_api_gives_memory_back_under_the_steps_never_trim_environment(process):
    """Both processes start with the steps' MALLOC_* variables, as the image and ConfigMap set them for every pod."""
    done = subprocess.run(
        [sys.executable, "-c", _ALLOCATE_AND_FREE, process],
        env={**os.environ, **PROCESS_ENV, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    high, after = map(int, done.stdout.split())
    if process == "api":
        assert after < high * 0.5, (high, after)  # the 300 MiB went back to the kernel
    else:
        assert after > high * 0.8, (high, after)  # a step keeps them for its next images, as PROCESS_ENV intends


# --- 2. honest states -------------------------------------------------------------------------------------------


def test_a_batch_whose_every_image_failed_is_failed_not_succeeded(
    http, api, keys, customer_images, photographs, run_stub, s3
):
    """In the API and in the CLI's `status`."""
    uris = customer_images(dict(list(photographs.items())[:3]))
    accepted = http("POST", "/v1/batches", json={"images": uris}).json()
    run_id = run_stub(accepted["batch_id"])
    location = accepted["result_location"]
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    marker = {
        "location": location,
        "format": "jsonl",
        "images": 3,
        "tagged": 0,
        "errors": 3,
        "objects": 3,
        "files": 1,
        "parts": [{"key": prefix + "part-00000.jsonl", "objects": 3, "bytes": 10, "sha256": "0"}],
        "run_id": run_id,
        "completed_at": "2026-11-24T00:00:00+00:00",
    }
    s3.put_object(Bucket=bucket, Key=prefix + "_COMPLETE.json", Body=json.dumps(marker).encode())
    body = http("GET", f"/v1/batches/{accepted['batch_id']}").json()
    assert body["state"] == "failed", body
    assert body["counts"] == {"images": 3, "tagged": 0, "errors": 3}
    assert "no image could be tagged" in body["error"]["message"]
    shown = subprocess.run(
        [sys.executable, "-m", "tagging_platform.cli", "status", accepted["batch_id"], "--api-url", api.url],
        cwd=REPO,
        env={**os.environ, "TP_API_KEY": keys["acme"]},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 1, shown.stderr
    assert f"batch {accepted['batch_id']}: failed, 100% done, 0 of 3 images tagged, 3 errors" in shown.stdout
    assert "no image could be tagged" in shown.stdout


# --- 3. isolation -----------------------------------------------------------------------------------------------


def test_a_default_customer_cannot_submit_another_customers_images(http, customer_images, photographs):
    theirs = customer_images(dict(list(photographs.items())[:1]), "globex")
    response = http("POST", "/v1/batches", json={"images": theirs})
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "image_forbidden"


def test_another_customers_manifest_is_403_whether_or_not_it_exists_and_never_quoted(http, s3):
    lines = b'{"source-ref": "s3://images/globex/a.jpg"}\n' + SECRET.encode() + b"\n"
    s3.put_object(Bucket="images", Key="globex/private/manifest.jsonl", Body=lines)
    existing = http("POST", "/v1/batches", json={"manifest": "s3://images/globex/private/manifest.jsonl"})
    missing = http("POST", "/v1/batches", json={"manifest": "s3://images/globex/private/missing.jsonl"})
    for response in (existing, missing):
        assert response.status_code == 403 and error_of(response)["code"] == "manifest_forbidden"
        assert "SECRET" not in response.text and "abc123" not in response.text
    # The same answer for both, but for the URI each named: nothing tells whether an object is there.
    assert existing.json()["error"]["details"] == missing.json()["error"]["details"]


def test_errors_about_your_own_manifest_quote_a_bounded_excerpt(http, s3):
    long_line = "x" * 5000
    s3.put_object(Bucket="images", Key="acme/manifests/long.jsonl", Body=f'{{"source-ref": "{long_line}"}}\n'.encode())
    response = http("POST", "/v1/batches", json={"manifest": "s3://images/acme/manifests/long.jsonl"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_manifest" and "line 1" in error["message"] and len(error["message"]) <= 300


def test_api_key_create_assigns_the_customers_own_image_folder_unless_told(embedded_s3, settings, s3):
    def create(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "tagging_platform.cli", "api-key", "create", *args, "--rotate"],
            cwd=REPO,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout.strip()

    code, key = create("hooli")
    assert code == 0 and CustomerStore(s3, settings).authenticate(key).image_prefixes == ("s3://images/hooli/",)
    code, key = create("hooli", "--all-images")
    assert code == 0 and CustomerStore(s3, settings).authenticate(key).image_prefixes == ("s3://images/",)
    store = CustomerStore(s3, settings)
    # A record written before the default (no image prefixes) is kept to its own folder too.
    record_key = store.record_key("hooli")
    record = json.loads(s3.get_object(Bucket=settings.warehouse_bucket, Key=record_key)["Body"].read())
    record.pop("all_images"), record.update(image_prefixes=[])
    s3.put_object(Bucket=settings.warehouse_bucket, Key=record_key, Body=json.dumps(record).encode())
    assert CustomerStore(s3, settings).authenticate(key).image_prefixes == ("s3://images/hooli/",)


@pytest.mark.parametrize("uri", ["s3://images/acme/%2e%2e/globex/a.jpg", "s3://images/acme/%2E./globex/a.jpg"])
def test_percent_encoded_dot_segments_are_refused_at_submission(http, uri):
    response = http("POST", "/v1/batches", json={"images": [uri]})
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "invalid_manifest" and "percent-encoded" in error_of(response)["message"]
    manifest = http("POST", "/v1/batches", json={"manifest": uri.replace("a.jpg", "m.json")})
    assert manifest.status_code == 422 and "percent-encoded" in error_of(manifest)["message"]


# --- 4. nothing secret in logs ----------------------------------------------------------------------------------


def test_no_key_reaches_the_logs_wherever_a_client_puts_it(api_settings, keys, photographs, model_ref):
    """uvicorn's real access log and every other logger at DEBUG, with the key in each place a client might put it."""
    records: list[tuple[str, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.name, self.format(record)))

    handler = Keep(logging.DEBUG)
    key = keys["acme"]
    wrong = key[:-4] + "ABCD"
    server = ApiServer.serving(api_settings)  # uvicorn sets its loggers' levels here: ours come after
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.access", "uvicorn.error", "tagging_platform")]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.disabled = False  # another test's logging.config may have disabled uvicorn's loggers
    image = next(iter(photographs.values()))
    answers: list[str] = []
    try:
        with server:

            def call(method, path, **kwargs):
                response = requests.request(method, server.url + path, timeout=120, **kwargs)
                answers.append(response.text[:300])
                return response.status_code

            bearer = {"Authorization": f"Bearer {key}"}
            assert call("GET", "/v1/batches", headers=bearer) == 200
            assert call("GET", "/v1/batches", headers={"X-API-Key": key}) == 200
            assert call("GET", "/v1/batches", headers={"Authorization": f"Bearer {wrong}"}) == 401
            assert call("GET", "/v1/batches", headers={"Authorization": key}) == 401  # no "Bearer"
            assert call("GET", f"/v1/batches?api_key={key}") == 401
            assert call("GET", f"/v1/batches?limit=5&token={wrong}&key={key}") == 401
            assert call("GET", f"/v1/batches/{key}", headers=bearer) == 404
            assert call("GET", f"/v1/{key}/batches") == 404
            assert call("GET", "/v1/batches", cookies={"api_key": key}) == 401
            assert call("GET", "/v1/batches", auth=("acme", key)) == 401  # HTTP basic
            assert call("POST", "/v1/batches", headers=bearer, json={"images": "nope", "api_key": key}) == 422
            assert call("POST", "/v1/batches", json={"images": ["s3://images/acme/a.jpg"], "key": key}) == 401
            assert call("POST", "/v1/tag", data={"api_key": key}, files={"image": ("a.jpg", image)}) == 401
            assert call("POST", "/v1/tag", headers=bearer, files={"image": (key, image)}) == 200, answers[-1]
    finally:
        for lg, level, disabled in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.disabled = disabled
    access = [text for name, text in records if name == "uvicorn.access"]
    assert any("/v1/batches" in line and "401" in line for line in access), "the server's access log was not captured"
    # The server's records, not the test client's own (urllib3 logs the URLs this test sent, keys and all).
    text = "\n".join(text for name, text in records if not (name.startswith("urllib3") and server.url in text))
    secret = key.rsplit("_", 1)[-1]
    assert key not in text and wrong not in text and secret not in text and secret[:20] not in text


# --- 5. links ---------------------------------------------------------------------------------------------------


def test_links_use_the_configured_public_url_never_the_host_header(http, api, customer_images, photographs):
    uris = customer_images(dict(list(photographs.items())[:1]))
    response = http(
        "POST",
        "/v1/batches",
        json={"images": uris},
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["status_url"].startswith(api.url + "/v1/batches/")
    assert response.headers["Location"] == response.json()["status_url"]
    listed = http("GET", "/v1/batches", headers={"Host": "evil.example"}).json()["batches"]
    assert listed and all(b["status_url"].startswith(api.url + "/") for b in listed)
    assert "evil.example" not in response.text


# --- 6. metrics -------------------------------------------------------------------------------------------------


def _submissions(api) -> dict[tuple[str, str], float]:
    text = requests.get(api.url + "/metrics", timeout=10).text
    return {
        (sample.labels["outcome"], sample.labels["code"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tagging_api_batch_submissions_total"
    }


def test_accepted_and_refused_submissions_are_counted_apart_by_code(http, api, customer_images, photographs):
    uris = customer_images(dict(list(photographs.items())[:1]))
    before = _submissions(api)
    assert http("POST", "/v1/batches", json={"images": uris}).status_code == 202
    assert http("POST", "/v1/batches", json={"images": ["s3://images/globex/a.jpg"]}).status_code == 403
    assert http("POST", "/v1/batches", json={"images": []}).status_code == 422
    assert http("POST", "/v1/batches", as_=None, json={"images": uris}).status_code == 401
    assert http("GET", "/v1/batches").status_code == 200  # not a submission
    after = _submissions(api)
    grown = {label: after[label] - before.get(label, 0) for label in after if after[label] != before.get(label, 0)}
    assert grown == {
        ("accepted", "none"): 1,
        ("refused", "image_forbidden"): 1,
        ("refused", "invalid_manifest"): 1,
        ("refused", "unauthenticated"): 1,
    }


# --- 7. the contract --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema(api) -> dict:
    return requests.get(api.url + "/openapi.json", timeout=30).json()


def test_health_routes_document_only_what_they_answer(schema):
    for path in ("/healthz", "/readyz"):
        documented = set(schema["paths"][path]["get"]["responses"])
        assert not documented & {"401", "413", "422"}, (path, documented)
    assert "400" in schema["paths"]["/v1/tag"]["post"]["responses"]
    assert all("405" in op["responses"] for ops in schema["paths"].values() for op in ops.values())


def test_a_malformed_multipart_body_is_the_documented_400(http):
    response = http(
        "POST", "/v1/tag", data=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "bad_request"


def test_another_method_is_405_with_allow(http):
    response = http("PUT", "/healthz", as_=None)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_error_codes_are_an_enum_and_every_code_is_documented(schema):
    codes = {code.value for code in ErrorCode}
    assert set(schema["components"]["schemas"]["ErrorCode"]["enum"]) == codes
    assert (
        schema["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["$ref"] == "#/components/schemas/ErrorCode"
    )
    documented = (REPO / "docs" / "api.md").read_text()
    assert {code for code in codes if f"`{code}`" not in documented} == set()


def test_the_interactive_docs_load_nothing_from_elsewhere(http):
    page = http("GET", "/docs", as_=None)
    assert page.status_code == 200
    assets = [a for a in ("swagger-ui-bundle.js", "swagger-ui.css") if f"/docs/assets/{a}" in page.text]
    assert len(assets) == 2, page.text
    assert "https://" not in page.text.replace("https://swagger.io", "") and "cdn" not in page.text.lower()
    for asset in assets:
        served = http("GET", f"/docs/assets/{asset}", as_=None)
        assert served.status_code == 200 and len(served.content) > 100_000


def test_the_deployment_names_a_public_url():
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "deploy" / "api.yaml").read_text())}
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("TP_API_PUBLIC_URL", "").startswith("https://")
