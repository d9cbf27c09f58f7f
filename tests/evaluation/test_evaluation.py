"""Held-out evaluation (`ddpo.evaluation`): the statistics, the named prompt sets, `evaluate`
on a tiny model with both samplers, and `compare`."""

import math
import statistics
from typing import Any

import pytest
import torch

from ddpo._prompt_lists import TEXT_PHRASES, TEXT_TEMPLATES
from ddpo.adapters import load_policy
from ddpo.data.shapes import is_held_out
from ddpo.evaluation import (
    EVAL_PROMPT_SETS,
    EvalReport,
    compare,
    eval_prompts,
    evaluate,
    mean_interval,
    paired_difference,
)
from ddpo.evaluation.prompt_sets import HELDOUT_TEXT_PHRASES, HELDOUT_TEXT_TEMPLATES
from ddpo.evaluation.stats import t_quantile_975
from ddpo.rewards.brightness import brightness

# ---- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "quantile"),
    [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)],
)
def test_t_quantiles_are_the_tabulated_ones(df: int, quantile: float) -> None:
    assert t_quantile_975(df) == pytest.approx(quantile, abs=5e-4)


def test_t_quantiles_between_tabulated_values_are_within_a_thousandth() -> None:
    # Student's t 0.975 quantiles: df 50 -> 2.0086, df 100 -> 1.9840, df 1000 -> 1.9623
    for df, quantile in ((50, 2.0086), (100, 1.9840), (1000, 1.9623)):
        assert t_quantile_975(df) == pytest.approx(quantile, abs=1e-3)
    assert t_quantile_975(10**9) == pytest.approx(1.960, abs=1e-4)
    with pytest.raises(ValueError, match="df must be an int >= 1, got 0"):
        t_quantile_975(0)


def test_mean_interval_is_students_t_interval() -> None:
    values = [0.2, 0.5, 0.4, 0.9, 0.6]
    got = mean_interval(values)
    half = 2.776 * statistics.stdev(values) / math.sqrt(5)
    assert got.mean == pytest.approx(statistics.fmean(values))
    assert got.low == pytest.approx(got.mean - half) and got.high == pytest.approx(got.mean + half)
    assert got.n == 5
    assert mean_interval([0.3]).to_json() == {"mean": 0.3, "low": 0.3, "high": 0.3, "n": 1}
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
    with pytest.raises(ValueError, match="finite values"):
        mean_interval([1.0, math.nan])


def test_paired_difference_pairs_prompts_and_says_when_it_exceeds_its_interval() -> None:
    base = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2]  # the prompts' own spread is large ...
    shifted = [b + 0.05 + 0.001 * i for i, b in enumerate(base)]  # ... the change is not
    diff = paired_difference(shifted, base)
    assert diff.interval.mean == pytest.approx(0.0525) and diff.significant
    noisy = [b + (0.05 if i % 2 else -0.05) for i, b in enumerate(base)]
    assert not paired_difference(noisy, base).significant
    assert not paired_difference(base, base).significant  # no difference at all
    with pytest.raises(ValueError, match="one value per prompt in both, got 2 and 6"):
        paired_difference([0.0, 1.0], base)


# ---- prompt sets ------------------------------------------------------------------------------


def test_shapes_heldout_is_every_held_out_caption_in_a_seeded_order() -> None:
    pool = eval_prompts("shapes_heldout")
    assert len(pool) == len({p for p, _ in pool}) == 168
    assert all(is_held_out(meta) for _, meta in pool)
    assert eval_prompts("shapes_heldout", 10) == pool[:10]
    assert eval_prompts("shapes_heldout", 10, seed=1) != pool[:10]


def test_text_rendering_heldout_shares_no_phrase_or_thing_with_training() -> None:
    pool = eval_prompts("text_rendering_heldout")
    assert len(pool) == len(HELDOUT_TEXT_TEMPLATES) * len(HELDOUT_TEXT_PHRASES)
    assert not set(HELDOUT_TEXT_PHRASES) & set(TEXT_PHRASES)
    assert not set(HELDOUT_TEXT_TEMPLATES) & set(TEXT_TEMPLATES)
    for prompt, meta in pool:
        assert f'"{meta["text"]}"' in prompt


def test_bad_prompt_set_arguments_are_named() -> None:
    assert set(EVAL_PROMPT_SETS) == {"shapes_heldout", "text_rendering_heldout"}
    with pytest.raises(ValueError, match=r"eval prompt set must be one of .* got 'shapes'"):
        eval_prompts("shapes")
    with pytest.raises(ValueError, match="num_prompts=500 is more than the 168 prompts"):
        eval_prompts("shapes_heldout", 500)
    with pytest.raises(ValueError, match="num_prompts must be a positive int or None, got 0"):
        eval_prompts("shapes_heldout", 0)


# ---- evaluate and compare on a tiny model -----------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> Any:
    torch.manual_seed(0)
    return load_policy("ddpo-tiny-random")


def red_and_brightness(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[Any, dict]:
    """Brightness as the reward, and the red channel's mean as a per-image metadata number."""
    assert len(prompts) == len(metadata) == len(images)
    return images.mean(dim=(1, 2, 3)), {"red": images[:, 0].mean(dim=(1, 2)).tolist(), "x": 1}


EVAL = {"num_prompts": 3, "images_per_prompt": 2, "num_steps": 2, "batch_size": 4}


@pytest.mark.slow
def test_evaluate_scores_each_prompts_images_with_intervals(policy: Any) -> None:
    result = evaluate(
        policy, "shapes_heldout", {"bright": red_and_brightness}, keep_images=6, **EVAL
    )
    report = result.report
    assert report.prompts == [p for p, _ in eval_prompts("shapes_heldout", 3)]
    assert set(report.metrics) == {"bright", "bright/red"}  # "x" is not per image
    images = result.images
    assert images.shape == (6, 3, 64, 64) and result.prompts == [
        p for p in report.prompts for _ in range(2)
    ]
    # a prompt's value is the mean over its images; the metric is the mean over prompts
    per_image = images.mean(dim=(1, 2, 3)).double()
    assert result.rewards == pytest.approx(per_image.tolist())
    expected = per_image.view(3, 2).mean(dim=1).tolist()
    assert report.per_prompt["bright"] == pytest.approx(expected)
    assert report.metrics["bright"].mean == pytest.approx(statistics.fmean(expected))
    red = images[:, 0].mean(dim=(1, 2)).double().view(3, 2).mean(dim=1).tolist()
    assert report.per_prompt["bright/red"] == pytest.approx(red)
    assert report.settings["sampler"] == "deterministic"
    # the deterministic sampler: image j of prompt i depends on its own seed only
    again = evaluate(policy, "shapes_heldout", {"bright": brightness}, **{**EVAL, "batch_size": 1})
    assert again.report.per_prompt["bright"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_the_policy_sampler_is_seeded_and_compare_pairs_the_prompts(policy: Any) -> None:
    def run(seed: int) -> EvalReport:
        return evaluate(
            policy, "shapes_heldout", {"b": brightness}, sampler="policy", seed=seed, **EVAL
        ).report

    first, same, other = run(0), run(0), run(1)
    assert first.per_prompt == same.per_prompt
    assert first.per_prompt != other.per_prompt
    no_change = compare(same, first)["b"]
    assert no_change.interval.mean == 0 and not no_change.significant
    brighter = EvalReport.from_json(first.to_json())
    brighter.per_prompt["b"] = [v + 0.1 for v in first.per_prompt["b"]]
    change = compare(brighter, first)["b"]
    assert change.interval.mean == pytest.approx(0.1) and change.significant
    changed = EvalReport.from_json(first.to_json())
    changed.settings["num_steps"] = 3
    with pytest.raises(ValueError, match=r"differing: \{'num_steps': \(3, 2\)\}"):
        compare(changed, first)
    with pytest.raises(ValueError, match="the same prompts in the same order"):
        compare(other, first)  # another seed orders the named set otherwise


@pytest.mark.slow
def test_bad_evaluate_arguments_are_refused_before_sampling(policy: Any) -> None:
    calls: list[int] = []

    def counting(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[Any, dict]:
        calls.append(len(images))
        return brightness(images)

    for kwargs, message in (
        ({"sampler": "ode"}, "sampler must be one of"),
        ({"images_per_prompt": 0}, "images_per_prompt must be a positive int, got 0"),
        ({"num_steps": 2.5}, "num_steps must be a positive int, got 2.5"),
        ({"keep_images": -1}, "keep_images must be an int >= 0, got -1"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number"),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate(policy, ["a red circle"], {"b": counting}, **kwargs)
    with pytest.raises(ValueError, match="rewards must name at least one"):
        evaluate(policy, ["a red circle"], {})
    assert calls == []


@pytest.mark.slow
def test_a_metadata_number_some_batches_lack_is_left_out(policy: Any) -> None:
    """Averaged over the images that had it, it would not be a per-prompt mean: not reported."""
    calls: list[int] = []

    def sometimes(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[Any, dict]:
        calls.append(len(images))
        info = {"always": [0.5] * len(images)}
        if len(calls) == 1:
            info["first_batch_only"] = [1.0] * len(images)
        return images.mean(dim=(1, 2, 3)), info

    report = evaluate(
        policy, ["a red circle", "a blue square"], {"r": sometimes}, num_steps=2, batch_size=1
    ).report
    assert calls == [1, 1]
    assert set(report.metrics) == {"r", "r/always"}
