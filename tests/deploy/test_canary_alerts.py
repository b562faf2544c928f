"""The canary's alerting rules, evaluated by Prometheus's own rule tester (promtool, Debian's prometheus package)."""

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO, apt_install

RULES = REPO / "deploy" / "prometheus" / "canary-alerts.yml"
SERIES = '{job="tagging_canary", model="mobilenet_v2", version="sha256:71f4"}'


@pytest.fixture(scope="module")
def promtool() -> str:
    if not shutil.which("promtool"):
        apt_install("prometheus")
    return shutil.which("promtool")


def run_rule_tests(promtool: str, tmp_path, tests: list[dict]) -> subprocess.CompletedProcess:
    path = tmp_path / "canary-alerts-test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)


def test_a_canary_that_stops_running_pages_after_two_and_a_half_intervals(promtool, tmp_path):
    # Verdicts at minute 0 and minute 30 (their Unix times 0 and 1800), then none: the schedule stopped.
    test = {
        "interval": "1m",
        "input_series": [
            {"series": f"tagging_canary_last_run_timestamp_seconds{SERIES}", "values": "0x29 1800x150"},
            {"series": f"tagging_canary_passed{SERIES}", "values": "1x180"},
        ],
        "promql_expr_test": [
            {"expr": "tagging:canary_age_seconds", "eval_time": "40m", "exp_samples": [{"labels": "tagging:canary_age_seconds", "value": 600}]}
        ],
        "alert_rule_test": [
            {"eval_time": "100m", "alertname": "TaggingCanaryStale", "exp_alerts": []},
            {
                "eval_time": "110m",
                "alertname": "TaggingCanaryStale",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "page"},
                        "exp_annotations": {
                            "summary": "No canary verdict for 1h 20m 0s: is canary_schedule running and do its runs succeed?"
                        },
                    }
                ],
            },
            {"eval_time": "110m", "alertname": "TaggingCanaryFailing", "exp_alerts": []},
        ],
    }
    result = run_rule_tests(promtool, tmp_path, [test])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_drifted_canary_pages_at_once_naming_the_model_version(promtool, tmp_path):
    test = {
        "interval": "1m",
        "input_series": [
            {"series": f"tagging_canary_last_run_timestamp_seconds{SERIES}", "values": "0x29 1800x30"},
            {"series": f"tagging_canary_passed{SERIES}", "values": "1x29 0x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "29m", "alertname": "TaggingCanaryFailing", "exp_alerts": []},
            {
                "eval_time": "30m",
                "alertname": "TaggingCanaryFailing",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "page", "model": "mobilenet_v2", "version": "sha256:71f4"},
                        "exp_annotations": {
                            "summary": "The canary drifted on mobilenet_v2 sha256:71f4: see the canary_predictions_match "
                            "check of batch canary@platform in Dagster."
                        },
                    }
                ],
            },
        ],
    }
    result = run_rule_tests(promtool, tmp_path, [test])
    assert result.returncode == 0, result.stdout + result.stderr
