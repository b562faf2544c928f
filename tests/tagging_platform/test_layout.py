"""The chunk layout spelled once (tagging_platform/layout.py): what a chunk writes lies under its model's prefix."""

from tagging_platform import layout
from tagging_platform.engine import ChunkSpec
from tagging_platform.models import ModelRef

MODEL = ModelRef("mobilenet_v2", "sha256:" + "ab" * 32, "models")


def test_a_chunks_keys_lie_under_its_batch_and_model_and_progress_outside_every_chunk_folder():
    spec = ChunkSpec("batch-1", "s3://m/batch-1.json", "etag", 3, (0, 1), ("s3://i/a.jpg", "s3://i/b.jpg"), MODEL)
    model = layout.model_prefix("batch-1", "mobilenet_v2", "abababababababab")
    assert model == "chunks/partition=batch-1/model=mobilenet_v2-abababababababab/"
    assert spec.result_prefix.startswith(model + "chunk-00003-") and spec.result_key.startswith(spec.result_prefix)
    assert spec.progress_key == model + "progress/chunk-00003.json"
    assert not spec.progress_key.startswith(spec.result_prefix)
    assert layout.reused_key("batch-1", "mobilenet_v2", "abababababababab", "d").startswith(model)
