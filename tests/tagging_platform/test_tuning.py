"""The engine tuned to its hardware: the batch probe and its cache, pinned settings, the precision gate, lineage."""

import copy
import dataclasses
import uuid

import pytest
import torch

from tagging_platform import cli, engine, models, tags, tuning
from tagging_platform.settings import Settings, SettingsError


def _fresh_model(s3, settings, purpose: str) -> models.ModelRef:
    """The built-in model under a name of its own: a version no other test has probed or gated."""
    card, artifact = models.builtin_model()
    card = dataclasses.replace(card, name=f"{purpose}-{uuid.uuid4().hex[:8]}")
    return models.publish_model(s3, settings.model_bucket, card, artifact)


def _no_probe(*args, **kwargs):
    raise AssertionError("the batch probe ran although its choice was stored or pinned")


def test_the_probe_picks_the_fastest_batch_and_a_second_load_reads_it(s3, settings, monkeypatch):
    ref = _fresh_model(s3, settings, "probe")
    first = engine.Tagger.load(s3, ref, device="cpu", precision="float32", probe_s=0.2)
    choice = first.batch_choice
    assert choice.source == "probe"
    assert set(choice.rates) >= {f"{size}/channels_last" for size in tuning.BATCH_CANDIDATES["cpu"]}
    assert f"{choice.batch_size}/{choice.memory_format}" == max(choice.rates, key=choice.rates.get)
    assert (first.batch_size, first.memory_format) == (choice.batch_size, choice.memory_format)
    key = tuning.tuning_key(ref, "float32", tuning.machine_identity("cpu"))
    assert s3.head_object(Bucket=ref.bucket, Key=key)

    monkeypatch.setattr(tuning, "probe_batch", _no_probe)
    second = engine.Tagger.load(s3, ref, device="cpu", precision="float32")
    assert second.batch_choice == dataclasses.replace(choice, source="cache")


def test_a_pinned_batch_size_wins_over_the_stored_choice(
    s3, settings, model_ref, monkeypatch, photographs, upload_images
):
    identity = tuning.machine_identity("cpu")
    tuning.store_choice(
        s3, model_ref, "float32", identity, tuning.BatchChoice(16, "contiguous", "probe", {"16/contiguous": 1.0})
    )
    monkeypatch.setattr(tuning, "probe_batch", _no_probe)
    tagger = engine.Tagger.load(s3, model_ref, device="cpu", precision="float32", batch_size=3, fetch_workers=2)
    assert (tagger.batch_size, tagger.memory_format, tagger.batch_choice.source) == (3, "channels_last", "pinned")
    uris = upload_images({"cat.jpg": photographs["chelsea.jpg"], "coffee.jpg": photographs["coffee.jpg"]})
    spec = engine.ChunkSpec(
        partition="tuning-test",
        manifest="s3://manifests/incoming/tuning-test.json",
        manifest_etag="e",
        index=0,
        positions=(0, 1),
        images=tuple(uris),
        model=model_ref,
    )
    rows, stats = tagger.tag(s3, spec, "run-1")
    # Lineage: every row and published object says which precision produced it; the chunk says how it ran.
    assert [row["precision"] for row in rows] == ["float32", "float32"]
    table = tags.tag_table(rows)
    assert table.column("precision").to_pylist() == ["float32", "float32"]
    assert tags.tag_object(table.to_pylist()[0])["model"]["precision"] == "float32"
    assert (stats.precision, stats.batch_size, stats.batch_source) == ("float32", 3, "pinned")


@pytest.fixture(scope="module")
def calibration():
    card, artifact = models.builtin_model()
    network = models.load_network(card, artifact, "cpu")
    inputs = engine.calibration_inputs(card)
    reference = tuning.top5(
        engine._prepare_for_inference(copy.deepcopy(network), card, "cpu"), inputs, "float32", "cpu"
    )
    return card, network, inputs, reference


def test_the_gate_refuses_a_precision_that_loses_tags(s3, settings, calibration, capsys):
    card, network, inputs, reference = calibration
    # A deliberately lossy stand-in for a lower precision: every weight carries noise of a third of its size.
    lossy = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for parameter in lossy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.abs() / 3)
    measured = tuning.top5(engine._prepare_for_inference(lossy, card, "cpu"), inputs, "float32", "cpu")
    refused = tuning.gate_record(reference, measured, "bfloat16", "cpu")
    assert refused["images"] == len(inputs) == 7 * tuning.CALIBRATION_VARIANTS
    assert refused["top5_containment"] < tuning.CONTAINMENT_TARGET and not refused["passed"]
    # The same network unchanged keeps every tag: the gate passes what does not lose them.
    same = tuning.top5(engine._prepare_for_inference(copy.deepcopy(network), card, "cpu"), inputs, "float32", "cpu")
    assert tuning.gate_record(reference, same, "bfloat16", "cpu")["passed"]

    ref = _fresh_model(s3, settings, "gate")
    tuning.record_gate(s3, ref, refused)
    assert models.read_card(s3, ref).version == ref.version  # the record is not part of the version
    with pytest.raises(tuning.PrecisionRefused, match=r"in bfloat16, float32's first tag stayed in the top 5 for"):
        engine.Tagger.load(s3, ref, device="cpu", precision="bfloat16", batch_size=4)
    assert engine.Tagger.load(s3, ref, device="cpu", precision="auto", batch_size=4).precision == "float32"

    assert cli.main(["model", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(ref.name))
    assert f"precision: float32, bfloat16 refused (top-5 {refused['top5_containment']:.3f})" in line


def test_a_lower_precision_is_measured_on_first_load_recorded_in_the_card_and_used(
    s3, settings, photographs, upload_images, capsys
):
    # bfloat16 named outright runs on any CPU (emulated where the CPU lacks it): the first load measures the gate
    # on the calibration photographs, records it in the card, and runs in bfloat16 since it kept the tags.
    ref = _fresh_model(s3, settings, "bf16")
    tagger = engine.Tagger.load(s3, ref, device="cpu", precision="bfloat16", batch_size=4, fetch_workers=2)
    record = tuning.read_gate(s3, ref)["bfloat16"]
    assert record["images"] == 7 * tuning.CALIBRATION_VARIANTS
    assert record["top5_containment"] >= tuning.CONTAINMENT_TARGET and record["passed"]
    assert (record["machine"], record["device"]) == (tuning.machine_identity("cpu"), "cpu")
    assert tagger.precision == "bfloat16"
    with torch.inference_mode():
        assert tagger.network(torch.zeros(1, 3, 224, 224, dtype=torch.bfloat16)).dtype == torch.bfloat16

    uris = upload_images({"cat.jpg": photographs["chelsea.jpg"]})
    spec = engine.ChunkSpec(
        partition="tuning-bf16",
        manifest="s3://manifests/incoming/tuning-bf16.json",
        manifest_etag="e",
        index=0,
        positions=(0,),
        images=tuple(uris),
        model=ref,
    )
    rows, stats = tagger.tag(s3, spec, "run-1")
    assert rows[0]["precision"] == stats.precision == "bfloat16" and rows[0]["top_tag"]
    assert tags.tag_object(tags.tag_table(rows).to_pylist()[0])["model"]["precision"] == "bfloat16"

    assert cli.main(["model", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(ref.name))
    assert f"precision: float32, bfloat16 ok (top-5 {record['top5_containment']:.3f})" in line


def test_precision_setting_is_checked():
    with pytest.raises(
        SettingsError, match="TP_PRECISION: Input should be 'auto', 'float32', 'bfloat16' or 'float16', not 'fp8'"
    ):
        Settings.from_env({"TP_PRECISION": "fp8"})
    with pytest.raises(models.ModelError, match="precision must be 'auto' or one of"):
        engine._gated_precision(None, None, None, None, "cpu", "fp8")


def test_cuda_runs_half_and_probes_larger_batches():
    # No GPU here: the CUDA choices are fixed by construction, and this says what they are.
    assert tuning.native_lower_precision("cuda") == "float16"
    assert max(tuning.BATCH_CANDIDATES["cuda"]) > max(tuning.BATCH_CANDIDATES["cpu"])
