"""The chunk planner's cost model."""

import pytest

from tagging_platform.planning import plan_chunks


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


def test_max_chunk_bounds_the_work_a_failed_pod_redoes():
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
