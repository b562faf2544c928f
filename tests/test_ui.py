"""The Dagster UI in a real browser (Debian's Chromium driven by Playwright) after a real batch: what operators see."""

import shutil

import pytest

from tagging_platform import photos
from tagging_platform.cli import upload_batch
from tagging_platform.local import LocalPlatform
from tagging_platform.manifests import partition_key_for
from tests.conftest import REPO, apt_install

pytestmark = pytest.mark.e2e
SCREENSHOTS = REPO / "docs" / "screenshots"
# Without these Chromium keeps trying to reach Google's services, which this machine's network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, installed from the package archive when the machine lacks it."""
    path = shutil.which("chromium")
    if path is None:
        apt_install("chromium")
        path = shutil.which("chromium")
    assert path, "chromium is not installed and apt-get could not install it"
    return path


def test_operators_see_the_asset_graph_checks_and_quality_metadata(chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    overrides = {"TP_MAX_CHUNK_IMAGES": "4", "TP_MIN_CHUNK_IMAGES": "1", "TP_SENSOR_INTERVAL_S": "2"}
    with LocalPlatform(
        REPO / "workspace.yaml", settings_overrides=overrides, dagster_home=tmp_path / "home"
    ) as platform:
        key = upload_batch(platform.s3(), platform.settings, "ui-photos", photos.sample_set(variants_per_photo=1))
        partition = partition_key_for(key, platform.settings.manifest_prefix)
        assert platform.wait_for_run(partition, timeout_s=600)["status"] == "SUCCESS"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})

            def visit(path: str, *texts: str) -> None:
                page.goto(f"{platform.ui_url}{path}")
                for text in texts:
                    page.get_by_text(text, exact=True).first.wait_for(timeout=60_000)
                skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit newsletter dialog
                if skip.count():
                    skip.first.click()

            visit("/asset-groups", "model", "intake", "tagging", "publishing", "quality")
            page.screenshot(path=str(SCREENSHOTS / "asset-graph.png"))

            visit(
                "/assets",
                "tagger_model",
                "manifest",
                "image_tags",
                "published_tags",
                "tag_quality_metrics",
                "tag_quality_history",
            )
            page.screenshot(path=str(SCREENSHOTS / "catalog.png"))

            visit(f"/assets/tag_quality_metrics?partition={partition}", "coverage", "low_confidence_share", "top_tags")
            page.screenshot(path=str(SCREENSHOTS / "quality-metrics.png"), full_page=True)

            checks = ("every_image_accounted_for", "error_rate", "low_confidence_share")
            visit("/assets/image_tags?view=checks", *checks)
            statuses = page.get_by_text("Succeeded", exact=True)
            for attempt in range(2):  # the statuses load after the names, by a query of their own
                try:
                    expect(statuses).to_have_count(len(checks), timeout=60_000)
                    break
                except AssertionError:
                    if attempt:
                        page.screenshot(path=str(tmp_path / "checks.png"))
                        pytest.fail(f"the checks did not all show Succeeded; the page said:\n{page.inner_text('body')}")
                    page.reload()
            page.screenshot(path=str(SCREENSHOTS / "checks.png"))
            browser.close()
    for name in ("asset-graph.png", "catalog.png", "quality-metrics.png", "checks.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
