"""The canary's alerting rules, evaluated by Prometheus's own rule tester (promtool, Debian's prometheus package)."""

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO, apt_install

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "canary-alerts.yml"
SERIES = '{job="tagging_canary", model="mobilenet_v2", version="sha256:71f4"}'


@pytest.fixture(scope="module")
def promtool() -> str:
    if not shutil.which("promtool"):
        apt_install("prometheus")
    return shutil.which("promtool")


def run_rule_tests(promtool: str, tmp_path, tests: list[dict]) -> subprocess.CompletedProcess:
    path = tmp_path / "canary-alerts-test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([promtool, "test", "rules", str(path)], check=False, capture_output=True, text=True)


def test_a_canary_that_stops_running_pages_after_two_and_a_half_intervals(promtool, tmp_path):
    # Verdicts at minute 0 and minute 30 (their Unix times 0 and 1800), then none: the schedule stopped.
    test = {
        "interval": "1m",
        "input_series": [
            {"series": f"tagging_canary_last_run_timestamp_seconds{SERIES}", "values": "0x29 1800x150"},
            {"series": f"tagging_canary_passed{SERIES}", "values": "1x180"},
        ],
        "promql_expr_test": [
            {
                "expr": "tagging:canary_age_seconds",
                "eval_time": "40m",
                "exp_samples": [{"labels": "tagging:canary_age_seconds", "value": 600}],
            }
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


def test_no_verdict_at_all_pages_after_two_and_a_half_intervals_and_a_verdict_clears_it(promtool, tmp_path):
    # The Pushgateway came back empty (or the canary never ran): no series at all for 80 minutes, then a verdict.
    test = {
        "interval": "1m",
        "input_series": [
            {"series": f"tagging_canary_last_run_timestamp_seconds{SERIES}", "values": "_x80 4800x20"},
            {"series": f"tagging_canary_passed{SERIES}", "values": "_x80 1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "74m", "alertname": "TaggingCanaryAbsent", "exp_alerts": []},
            {
                "eval_time": "76m",
                "alertname": "TaggingCanaryAbsent",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "page"},
                        "exp_annotations": {
                            "summary": "No canary verdict in Prometheus for 75 minutes: is the Pushgateway scraped, and has "
                            "canary_schedule run since it restarted?"
                        },
                    }
                ],
            },
            {"eval_time": "76m", "alertname": "TaggingCanaryStale", "exp_alerts": []},  # no series: it cannot fire
            {"eval_time": "85m", "alertname": "TaggingCanaryAbsent", "exp_alerts": []},
        ],
    }
    result = run_rule_tests(promtool, tmp_path, [test])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_and_scrape_configs_pass_promtool_check(promtool, tmp_path):
    rules = subprocess.run([promtool, "check", "rules", str(RULES)], check=False, capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS: 4 rules found" in rules.stdout, rules.stdout + rules.stderr
    # The scrape jobs as an operator adds them to a Prometheus config, with the alert rules loaded. Debian builds
    # Prometheus without Kubernetes service discovery, so promtool checks everything but the discovery block
    # (a static target in its place); the block itself is checked here and by tests/deploy/test_deploy_truth.py.
    jobs = yaml.safe_load((PROMETHEUS / "scrape-configs.yml").read_text())["scrape_configs"]
    for job in jobs:
        [discovery] = job.pop("kubernetes_sd_configs")
        assert discovery["role"] in ("pod", "service") and discovery["namespaces"] == {"names": ["tagging"]}
        job["static_configs"] = [{"targets": ["127.0.0.1:9091"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "scrape_configs": jobs}))
    checked = subprocess.run([promtool, "check", "config", str(config)], check=False, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_check_rejects_a_broken_rule(promtool, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        RULES.read_text().replace(
            "absent(tagging_canary_last_run_timestamp_seconds)", "absent(tagging_canary_last_run_timestamp_seconds"
        )
    )
    assert (
        subprocess.run(
            [promtool, "check", "rules", str(broken)], check=False, capture_output=True, text=True
        ).returncode
        != 0
    )
