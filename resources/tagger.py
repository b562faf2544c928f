"""The tagger resource: the engine's settings for a step, and the model loaded once per step process."""

import threading

import dagster as dg

from tagging_platform.engine import Tagger
from tagging_platform.models import ModelRef

# Steps that share a process (the in-process executor, tests) reuse the loaded model.
_loaded: dict[tuple, Tagger] = {}


class TaggerResource(dg.ConfigurableResource):
    """How `tag_chunk` runs the engine, as the settings say (resources.build_resources; the defaults and their
    meaning are the TP_* settings' own, tagging_platform/settings.py)."""

    device: str
    precision: str
    batch_size: int
    fetch_workers: int
    top_k: int
    min_confidence: float

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Where a run's steps share one process (a small batch), the resource is set up as the run starts: torch
        # and torchvision import while the manifest and planning steps run, not after them in `tag_chunk`. A
        # step process of its own sets it up just before `tag_chunk`, with nothing to overlap.
        if _in_process(context.dagster_run):
            threading.Thread(target=_import_torch, name="import-torch", daemon=True).start()

    def load(self, s3_client, ref: ModelRef) -> Tagger:
        options = {
            "precision": self.precision,
            "batch_size": self.batch_size,
            "fetch_workers": self.fetch_workers,
            "top_k": self.top_k,
            "min_confidence": self.min_confidence,
        }
        key = (ref, self.device, *options.values())
        if key not in _loaded:
            _loaded.clear()
            _loaded[key] = Tagger.load(s3_client, ref, device=self.device, **options)
        return _loaded[key]


def _import_torch() -> None:
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def _in_process(run: dg.DagsterRun | None) -> bool:
    """Whether the run's config asks the local executor for one process (tagging_platform/api/launch.py)."""
    execution = run.run_config.get("execution") if run else None
    return bool(((execution or {}).get("config") or {}).get("in_process"))
