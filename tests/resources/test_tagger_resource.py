"""The tagger resource starts torch's import early only where a run's steps share its process."""

import dagster as dg
import pytest

from resources import tagger
from tagging_platform.intake import IN_PROCESS


@pytest.mark.parametrize(
    ("run_config", "in_process"),
    [
        # The config the API launches a small batch with: the shape the resource reads is the launcher's own.
        (IN_PROCESS, True),
        ({"execution": {"config": {"in_process": False}}}, False),
        ({"execution": {"config": {}}}, False),
        ({}, False),
    ],
)
def test_the_import_starts_early_only_in_a_one_process_run(run_config, in_process):
    assert tagger._in_process(dg.DagsterRun(job_name="tag_manifest", run_config=run_config)) is in_process
    assert tagger._in_process(None) is False
