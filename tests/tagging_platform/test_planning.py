"""The chunk planner's cost model, and the shipped settings it plans with."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_platform.planning import plan_chunks, plan_for
from tagging_platform.settings import Settings, SettingsError


def test_a_million_images_meet_an_hour_with_startup_a_small_share():
    plan = plan_chunks(1_000_000, ms_per_image=10, startup_s=300, max_gpus=8, deadline_min=60)
    assert plan.meets_deadline
    assert plan.chunks * plan.chunk_images >= 1_000_000
    assert plan.pods <= 8
    assert plan.startup_share < 0.15
    assert plan.gpu_hours == pytest.approx((plan.chunks * 300 + 10_000) / 3600)


def test_a_tighter_deadline_buys_speed_with_more_chunks_and_more_gpu_hours():
    relaxed = plan_chunks(1_000_000, ms_per_image=10, startup_s=300, max_gpus=16, deadline_min=120)
    tight = plan_chunks(1_000_000, ms_per_image=10, startup_s=300, max_gpus=16, deadline_min=20)
    assert tight.chunks > relaxed.chunks
    assert tight.wall_s < relaxed.wall_s
    assert tight.gpu_hours > relaxed.gpu_hours
    assert tight.meets_deadline and relaxed.meets_deadline


def test_an_impossible_deadline_is_reported_not_hidden():
    plan = plan_chunks(1_000_000, ms_per_image=10, startup_s=300, max_gpus=2, deadline_min=10)
    assert not plan.meets_deadline
    assert plan.pods == 2


def test_max_chunk_bounds_a_chunks_size():
    plan = plan_chunks(100_000, ms_per_image=10, startup_s=60, max_gpus=4, deadline_min=600, max_chunk_images=10_000)
    assert plan.chunk_images <= 10_000
    assert plan.chunks == 10
    assert plan.waves == 3


def test_a_small_manifest_is_one_chunk():
    plan = plan_chunks(30, ms_per_image=10, startup_s=60, max_gpus=8, deadline_min=60, min_chunk_images=500)
    assert (plan.chunks, plan.chunk_images, plan.pods) == (1, 30, 1)


def test_cost_follows_gpu_hours():
    plan = plan_chunks(10_000, ms_per_image=10, startup_s=60, max_gpus=1, deadline_min=60, gpu_hour_usd=2.5)
    assert plan.cost_usd == pytest.approx(plan.gpu_hours * 2.5)


def test_the_tradeoff_table_shows_cost_falling_as_the_deadline_grows():
    from tagging_platform.planning import tradeoff

    table = tradeoff(1_000_000, [15, 60, 240], ms_per_image=10, startup_s=300, max_gpus=8, gpu_hour_usd=1.2)
    rows = [[cell.strip() for cell in line.split("|")] for line in table.splitlines()[1:]]
    costs = [float(row[6].lstrip("$")) for row in rows]
    assert costs == sorted(costs, reverse=True)
    assert [row[-1] for row in rows] == ["NO", "yes", "yes"]
    assert "1 chunk of" in plan_chunks(10, ms_per_image=10, startup_s=300, max_gpus=8, deadline_min=60).describe()


def test_the_shipped_settings_plan_a_million_images_within_the_hour_at_most_11_percent_start_up():
    plan = plan_for(Settings(), 1_000_000)
    assert Settings().ms_per_image == 10 and Settings().startup_s == 300 and Settings().max_gpus == 8
    assert plan.meets_deadline and plan.wall_s <= 60 * 60
    assert plan.startup_share <= 0.11
    described = plan.describe()
    # Why each bound applies: the deadline sets the chunk count, the GPU cap the pods, checkpoints the lost work.
    assert "60-min deadline" in described and "TP_MAX_GPUS 8" in described and "TP_CHECKPOINT_IMAGES" in described


def test_gpus_other_batches_hold_make_the_plan_wait_not_shrink():
    alone = plan_for(Settings(), 1_000_000)
    behind = plan_for(Settings(), 1_000_000, gpus_held=8)
    assert (behind.chunks, behind.pods) == (alone.chunks, alone.pods)
    assert behind.waves == alone.waves + 1 and behind.gpus_free == 0
    assert "hold 8 of the 8 GPUs" in behind.describe()
    assert plan_for(Settings(), 1_000_000, gpus_held=4) == alone.__class__(**{**alone.as_dict(), "gpus_free": 4})


def test_a_pod_may_wait_to_be_placed_for_node_start_up_plus_the_waves_ahead_of_it():
    settings = Settings()
    one_wave = plan_for(settings, 1_000_000)
    assert one_wave.unschedulable_timeout_s == settings.step_unschedulable_timeout_s
    three_waves = plan_for(settings, 10_000_000)
    wave_s = settings.startup_s + three_waves.chunk_images * settings.ms_per_image / 1000
    assert three_waves.waves == 3
    assert three_waves.unschedulable_timeout_s == settings.step_unschedulable_timeout_s + 2 * wave_s
    behind = plan_for(settings, 1_000_000, gpus_held=8)
    assert behind.unschedulable_timeout_s == settings.step_unschedulable_timeout_s + behind.wall_s / 2


plans = st.fixed_dictionaries(
    {
        "images": st.integers(1, 20_000_000),
        "ms_per_image": st.floats(0.1, 1_000),
        "startup_s": st.floats(0, 3_600),
        "max_gpus": st.integers(1, 64),
        "deadline_min": st.floats(1, 24 * 60),
        "min_chunk_images": st.integers(1, 10_000),
        "max_chunk_images": st.one_of(st.none(), st.integers(10_000, 2_000_000)),
        "gpus_held": st.integers(0, 64),
    }
)


@settings(max_examples=400, deadline=None)
@given(plans)
def test_every_plan_covers_its_images_within_the_gpu_cap_and_reports_its_start_up_share(options):
    plan = plan_chunks(**options)
    images = options["images"]
    assert plan.chunks * plan.chunk_images >= images > (plan.chunks - 1) * plan.chunk_images
    assert 1 <= plan.pods <= min(plan.chunks, options["max_gpus"])
    if options["max_chunk_images"] and images >= options["min_chunk_images"]:
        assert plan.chunk_images <= max(options["max_chunk_images"], options["min_chunk_images"])
    gpu_s = plan.chunks * options["startup_s"] + images * options["ms_per_image"] / 1000
    assert plan.gpu_hours == pytest.approx(gpu_s / 3600)
    assert plan.startup_share == pytest.approx(plan.chunks * options["startup_s"] / gpu_s)
    assert plan.meets_deadline == (plan.wall_s <= options["deadline_min"] * 60)


@settings(max_examples=400, deadline=None)
@given(plans)
def test_a_deadline_one_wave_of_free_gpus_can_meet_is_met_with_the_fewest_chunks(options):
    options = {**options, "max_chunk_images": None, "min_chunk_images": 1, "gpus_held": 0}
    # Whole images: the most one pod tags within the deadline after its start-up.
    per_pod = math.floor((options["deadline_min"] * 60 - options["startup_s"]) * 1000 / options["ms_per_image"])
    if per_pod < 1 or math.ceil(options["images"] / per_pod) > options["max_gpus"]:
        return
    plan = plan_chunks(**options)
    assert plan.meets_deadline and plan.waves == 1
    # One chunk fewer would miss it: every extra chunk is a pod's start-up more than the deadline needs.
    if plan.chunks > 1:
        assert math.ceil(options["images"] / (plan.chunks - 1)) > per_pod


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TP_CHECKPOINT_IMAGES", "0"),
        ("TP_CHECKPOINT_S", "-1"),
        ("TP_CHECKPOINT_IMAGES", "many"),
        ("TP_MAX_GPUS", "0"),
        ("TP_MS_PER_IMAGE", "0"),
        ("TP_DEADLINE_MIN", "0"),
        ("TP_STARTUP_S", "-5"),
        ("TP_MIN_CHUNK_IMAGES", "0"),
        ("TP_MAX_CHUNK_IMAGES", "10"),  # below TP_MIN_CHUNK_IMAGES (500)
    ],
)
def test_planning_and_checkpoint_settings_are_validated_with_errors_naming_the_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})
