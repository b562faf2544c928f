"""The model registry: built-in models, a customer's model registered by command, cards that refuse bad input."""

import hashlib
import io
import json

import pytest

from tagging_platform import cli, engine, models
from tagging_platform.engine import ChunkSpec

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


def _spec(uris, ref):
    return ChunkSpec("p", "s3://manifests/m.json", "etag", 0, tuple(range(len(uris))), tuple(uris), ref)


def test_efficientnet_lite0_is_registered_with_its_own_normalisation_and_runs_on_cpu(
    s3, settings, photographs, upload_images
):
    card, artifact = models.builtin_model("efficientnet_lite0")
    assert card.preprocessing.mean == pytest.approx((127 / 255,) * 3) and card.profile.accelerator == "cpu"
    ref = models.publish_model(s3, settings.model_bucket, card, artifact)
    tagger = engine.Tagger.load(s3, ref, batch_size=4, fetch_workers=2)
    assert tagger.device == "cpu"  # its profile says CPU, whatever the machine has

    uris = upload_images({"cat.jpg": photographs["chelsea.jpg"], "coffee.jpg": photographs["coffee.jpg"]})
    rows, stats = tagger.tag(s3, _spec(uris, ref), run_id="run-1")
    assert stats.errors == 0
    assert rows[0]["top_tag"] in CAT_CLASSES
    assert rows[1]["top_tag"] == "espresso" and rows[1]["top_confidence"] > 0.8
    assert {r["model_name"] for r in rows} == {"efficientnet_lite0"}


def test_a_model_card_refuses_what_cannot_work():
    base = models.builtin_model()[0]
    with pytest.raises(models.ModelError, match="model name 'Bad Name'"):
        models.ModelCard("Bad Name", "torchscript", "0" * 64, ("a",), base.preprocessing)
    with pytest.raises(models.ModelError, match="kind must be one of"):
        models.ModelCard("m", "onnx", "0" * 64, ("a",), base.preprocessing)
    with pytest.raises(models.ModelError, match="needs an architecture"):
        models.ModelCard("m", "torchvision", "0" * 64, ("a",), base.preprocessing)
    with pytest.raises(models.ModelError, match="no labels"):
        models.ModelCard("m", "torchscript", "0" * 64, (), base.preprocessing)
    with pytest.raises(models.ModelError, match="accelerator"):
        models.ResourceProfile(accelerator="tpu")


def test_the_profile_is_recorded_but_not_part_of_the_version():
    card, _ = models.builtin_model()
    cpu = models.ModelCard(**{**card.__dict__, "profile": models.ResourceProfile(accelerator="cpu")})
    assert cpu.version == card.version
    assert models.ModelCard.from_dict(cpu.as_dict(), list(cpu.labels)).profile.accelerator == "cpu"


def _torchscript(tmp_path, classes: int):
    import torch

    network = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, classes))
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(network.eval()), str(path))
    return path


def test_model_register_and_list_on_the_command_line(s3, settings, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    name = f"cli-net-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:6]}"
    code = cli.main(
        [
            "model",
            "register",
            name,
            "--torchscript",
            str(_torchscript(tmp_path, 2)),
            "--labels",
            str(labels),
            "--accelerator",
            "cpu",
            "--memory",
            "1Gi",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    ref = models.resolve_model(s3, settings.model_bucket, name)
    assert ref.version in out
    card = models.read_card(s3, ref)
    assert card.labels == ("cat", "dog") and card.profile == models.ResourceProfile("cpu", "1Gi", 32)

    assert cli.main(["model", "list"]) == 0
    listed = capsys.readouterr().out
    assert any(line.startswith(name) and "cpu" in line for line in listed.splitlines())


def test_a_network_that_disagrees_with_its_labels_is_not_registered(s3, settings, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    code = cli.main(
        ["model", "register", "mismatch", "--torchscript", str(_torchscript(tmp_path, 2)), "--labels", str(labels)]
    )
    assert code == 2
    assert "gives (1, 2) for one image, but there are 3 labels" in capsys.readouterr().err
    with pytest.raises(models.ModelError, match="unknown model 'mismatch'"):
        models.resolve_model(s3, settings.model_bucket, "mismatch")


def test_a_corrupt_artifact_is_named_not_registered(tmp_path):
    card, _ = models.builtin_model()
    broken = io.BytesIO(b"not a model").getvalue()
    with pytest.raises(models.ModelError, match="does not match the card's sha256|corrupt"):
        models.check_network(card, broken)
