"""Flow-GRPO's training conventions as `DDPOConfig` options (issue #21, item 3, trainer side).

``kl_convention``, ``train_drop_zero_advantages``, ``train_timestep_order`` and
``train_clip_range_low``/``_high``: their per-step loss against Flow-GRPO's own
(``tests/fixtures/flow_grpo_loss.*``), their checks, and what each changes in a short
`DDPOTrainer` run on the tiny SD3 model (2- or 3-step rollouts, 4 samples).
"""

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.adapters import load_policy
from ddpo.cli import parse_train_args
from ddpo.core import clip_advantages
from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer.advantages import kept_rows, num_dropped
from ddpo.trainer.optimisation import timestep_loss

from .test_trainer import MODEL, SD3_MODEL, read_metrics, tiny_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOSS_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "flow_grpo_loss.json").read_text())[
    "cases"
]
RED, BLUE = "a red circle", "a blue square"
NEW_FIELDS = (
    "kl_convention",
    "train_drop_zero_advantages",
    "train_timestep_order",
    "train_clip_range_low",
    "train_clip_range_high",
)


# --- the per-step loss on Flow-GRPO's tensors --------------------------------------------------


class Score(NamedTuple):
    """A `ddpo.policy.StepScore` built from the fixture's tensors."""

    log_prob: torch.Tensor
    mean: torch.Tensor
    std_dev: torch.Tensor
    flow_grpo_std_dev: torch.Tensor


class ExactOnlyScore(NamedTuple):
    log_prob: torch.Tensor
    mean: torch.Tensor
    std_dev: torch.Tensor


def _case(index: int) -> dict[str, torch.Tensor]:
    tensors = load_file(FIXTURES / "flow_grpo_loss.safetensors")
    prefix = f"case{index}."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: f"case{c['case']}")
def test_timestep_loss_matches_flow_grpo(case: dict[str, Any]) -> None:
    """The trainer's per-step loss on Flow-GRPO's inputs: with ``kl_convention="flow_grpo"`` its
    ``loss`` and ``kl_loss`` (``kl_coef`` = its ``beta``); with ``"exact"`` the KL of each
    sample is Flow-GRPO's over that sample's ``-dt`` (the step's variance: ``std_dev_t^2 (-dt)``).
    """
    t = _case(case["case"])
    minus_dt = (t["sigma"] - t["sigma_prev"]).flatten()
    std_dev_t = t["std_dev_t"].flatten()
    score = Score(t["log_prob"], t["prev_sample_mean"], std_dev_t * minus_dt.sqrt(), std_dev_t)
    reference = score._replace(mean=t["prev_sample_mean_ref"])
    advantages = clip_advantages(t["advantages"], adv_clip_max=case["adv_clip_max"])
    common: dict[str, Any] = {"train_clip_range": case["clip_range"], "kl_coef": case["beta"]}

    config = DDPOConfig(kl_convention="flow_grpo", **common)
    loss, metrics = timestep_loss(config, score, t["old_log_prob"], advantages, reference)
    torch.testing.assert_close(loss, t["loss"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(metrics["loss"], t["loss"], rtol=1e-6, atol=1e-7)
    if case["beta"] > 0:
        torch.testing.assert_close(metrics["kl"], t["kl_loss"], rtol=1e-6, atol=1e-9)
    else:
        assert "kl" not in metrics

    exact_loss, exact = timestep_loss(
        DDPOConfig(**common), score, t["old_log_prob"], advantages, reference
    )
    if case["beta"] > 0:
        gap = (t["prev_sample_mean"] - t["prev_sample_mean_ref"]).square().mean(dim=(1, 2, 3))
        per_sample = gap / (2 * std_dev_t.square()) / minus_dt
        torch.testing.assert_close(exact["kl"], per_sample.mean(), rtol=1e-5, atol=0)
        assert exact["kl"] > metrics["kl"]  # -dt < 1
    policy_loss = t["policy_loss"]
    torch.testing.assert_close(exact_loss, policy_loss + case["beta"] * exact.get("kl", 0.0))


def test_timestep_loss_asymmetric_clip_and_missing_members() -> None:
    """``train_clip_range_low``/``_high`` bound the ratio on each side; the ``flow_grpo`` KL
    needs ``flow_grpo_std_dev`` and a reference score."""
    t = _case(1)  # clip_range 0.2: ratios both sides of 1
    ratio = torch.exp(t["log_prob"] - t["old_log_prob"])
    advantages = clip_advantages(t["advantages"], adv_clip_max=5.0)
    score = ExactOnlyScore(t["log_prob"], t["prev_sample_mean"], t["std_dev_t"].flatten())
    for low, high in ((1e-3, 0.5), (0.5, 1e-3)):
        config = DDPOConfig(train_clip_range_low=low, train_clip_range_high=high)
        loss, metrics = timestep_loss(config, score, t["old_log_prob"], advantages)
        clamped = ratio.clamp(1 - low, 1 + high)
        expected = torch.maximum(-advantages * ratio, -advantages * clamped).mean()
        torch.testing.assert_close(loss, expected)
        outside = ((ratio < 1 - low) | (ratio > 1 + high)).float().mean()
        torch.testing.assert_close(metrics["clip_fraction"], outside)
    flow_grpo = DDPOConfig(kl_coef=0.04, kl_convention="flow_grpo")
    with pytest.raises(ValueError, match="flow_grpo_std_dev"):
        timestep_loss(flow_grpo, score, t["old_log_prob"], advantages, score)
    with pytest.raises(ValueError, match="kl_coef"):
        timestep_loss(flow_grpo, score, t["old_log_prob"], advantages)


@settings(max_examples=60, deadline=None)
@given(
    num_batches=st.integers(1, 4),
    per_batch=st.integers(1, 4),
    data=st.data(),
)
def test_kept_rows_fill_whole_micro_batches(
    num_batches: int, per_batch: int, data: st.DataObject
) -> None:
    """Every nonzero-advantage sample, in order, topped up with zero-advantage ones to a
    positive multiple of the micro-batch count; `num_dropped` counts the rest."""
    n = num_batches * per_batch
    values = data.draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, -0.5]), min_size=n, max_size=n))
    advantages = torch.tensor(values)
    rows = kept_rows(
        advantages, num_batches=num_batches, generator=torch.Generator().manual_seed(0)
    )
    nonzero = set(torch.nonzero(advantages).flatten().tolist())
    assert rows.tolist() == sorted(rows.tolist()) and nonzero <= set(rows.tolist())
    smallest_multiple = max(1, -(-len(nonzero) // num_batches)) * num_batches
    assert len(rows) == smallest_multiple
    twice = torch.cat([advantages, advantages])
    assert num_dropped(twice, num_processes=2, num_batches=num_batches) == 2 * (n - len(rows))


# --- the fields: checks, flags, resume ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("kl_convention", "flowgrpo", ValueError),
        ("train_timestep_order", "last", ValueError),
        ("train_drop_zero_advantages", 1, TypeError),
        ("train_clip_range_low", 0.0, ValueError),
        ("train_clip_range_high", float("inf"), ValueError),
        ("train_clip_range_high", "0.1", TypeError),
        ("train_clip_range_low", True, TypeError),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any, error: type) -> None:
    # Set after construction so that validate() itself is tested (with the jaxtyping hook on,
    # beartype would reject a wrong type in __init__ first).
    config = DDPOConfig()
    setattr(config, field, value)
    with pytest.raises(error, match=rf"DDPOConfig\.{field}.*{re.escape(repr(value))}"):
        config.validate()


def test_defaults_are_ddpos_and_flags_set_every_field() -> None:
    defaults = DDPOConfig()
    assert (defaults.kl_convention, defaults.train_timestep_order) == ("exact", "random")
    assert not defaults.train_drop_zero_advantages
    assert defaults.train_clip_range_low is None and defaults.train_clip_range_high is None
    args = parse_train_args(
        [
            "--ddpo_config.kl_convention",
            "flow_grpo",
            "--ddpo_config.train_drop_zero_advantages",
            "--ddpo_config.train_timestep_order",
            "first",
            "--ddpo_config.train_clip_range_low",
            "1e-5",
            "--ddpo_config.train_clip_range_high",
            "2e-5",
        ]
    )
    config = args.ddpo_config
    assert config.kl_convention == "flow_grpo" and config.train_timestep_order == "first"
    assert config.train_drop_zero_advantages
    assert (config.train_clip_range_low, config.train_clip_range_high) == (1e-5, 2e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kl_convention", "flow_grpo"),
        ("train_drop_zero_advantages", True),
        ("train_timestep_order", "first"),
        ("train_clip_range_low", 1e-5),
        ("train_clip_range_high", 1e-3),
    ],
)
def test_changing_a_field_on_resume_is_refused(tmp_path: Path, field: str, value: Any) -> None:
    """Each changes the run: a resume with another value is refused, naming the field."""
    (tmp_path / ckpt.CONFIG_FILENAME).write_text(json.dumps(DDPOConfig().to_dict()))
    assert field in NEW_FIELDS
    with pytest.raises(ckpt.CheckpointError, match=field):
        ckpt.check_resume_config(tmp_path, DDPOConfig(**{field: value}))
    ckpt.check_resume_config(
        tmp_path, DDPOConfig(resume_allow_config_changes=True, **{field: value})
    )


# --- short runs on the tiny SD3 model ---------------------------------------------------------

slow = pytest.mark.slow


class Groups:
    """Prompts in groups of two (red, red, blue, blue, ...), resumable."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> tuple[str, dict[str, Any]]:
        prompt = (RED, BLUE)[self.count // 2 % 2]
        self.count += 1
        return prompt, {}

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


def brightness(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    return images.mean(dim=(1, 2, 3)), {}


def red_tied(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    """Brightness, except that every red sample scores 0.5: the red group's advantages are 0."""
    rewards = images.mean(dim=(1, 2, 3))
    return torch.where(torch.tensor([p == RED for p in prompts]), 0.5, rewards), {}


def all_tied(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    return torch.full((len(prompts),), 0.5), {}


def sd3_config(output_dir: Path | None, **overrides: Any) -> DDPOConfig:
    values: dict[str, Any] = {
        "sample_guidance_scale": 1.0,
        "train_timestep_fraction": 1.0,
        "train_learning_rate": 1e-2,
        "advantage_mode": "group",
    }
    return tiny_config(output_dir, **(values | overrides))


class Recorder:
    """Wraps a policy's ``rollout`` and ``score`` (the `DiffusionPolicy` boundary) to record what
    the trainer samples and which transitions it trains (the ``score`` calls with a denoiser)."""

    def __init__(self, policy: Any) -> None:
        self.rollouts: list[torch.Tensor] = []
        self.schedules: list[torch.Tensor] = []
        self.trained: list[tuple[torch.Tensor, torch.Tensor]] = []
        rollout, score = policy.rollout, policy.score

        def record_rollout(*args: Any, **kwargs: Any) -> Any:
            out = rollout(*args, **kwargs)
            self.rollouts.append(out.latents.detach().clone())
            self.schedules.append(out.schedule.detach().cpu().clone())
            return out

        def step_of(row: torch.Tensor) -> int:
            """The index of a schedule row among its rollout's recorded transitions."""
            for schedule in self.schedules:
                found = [i for i, r in enumerate(schedule) if torch.equal(r, row)]
                if found:
                    return found[0]
            raise AssertionError(f"a scored row of no rollout: {row}")

        def record_score(conditioning: Any, latents: Any, nxt: Any, rows: Any, **kw: Any) -> Any:
            if kw.get("denoiser") is not None:
                steps = torch.tensor([step_of(row) for row in rows.detach().cpu()])
                self.trained.append((latents.detach().clone(), steps))
            return score(conditioning, latents, nxt, rows, **kw)

        policy.rollout, policy.score = record_rollout, record_score


def train(
    output_dir: Path,
    config: DDPOConfig,
    reward: Callable[..., Any] = brightness,
    *,
    recorder: bool = False,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any, Recorder | None]:
    """One run from a fresh tiny SD3 policy: its last metrics row, weights, policy, recorder."""
    torch.manual_seed(0)
    policy = load_policy(SD3_MODEL)
    spy = Recorder(policy) if recorder else None
    trainer = DDPOTrainer(config, reward, Groups(), policy)
    trainer.train()
    trainer.close()
    return read_metrics(output_dir)[-1], trainer.trainable_state_dict(), policy, spy


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@slow
def test_kl_convention_flow_grpo_is_the_exact_kl_times_the_step_size(tmp_path: Path) -> None:
    """Training only the first of 3 steps (``train_timestep_order="first"``), the KL logged with
    ``kl_convention="exact"`` is the ``"flow_grpo"`` one over that step's ``-dt`` (4.02 on this
    schedule). The first optimizer step has no KL (the policy is the reference) and no KL
    gradient, so both runs reach the second step with the same weights."""
    common: dict[str, Any] = {
        "kl_coef": 0.1,
        "sample_num_steps": 3,
        "train_timestep_fraction": 0.34,  # int(3 * 0.34) = 1 step
        "train_timestep_order": "first",
    }
    exact, _, _, _ = train(tmp_path / "e", sd3_config(tmp_path / "e", **common))
    theirs, _, policy, _ = train(
        tmp_path / "f", sd3_config(tmp_path / "f", kl_convention="flow_grpo", **common)
    )
    sigmas = policy.scheduler.sigmas  # the last rollout's 3-step schedule
    minus_dt = float(sigmas[0] - sigmas[1])
    assert 0 < theirs["kl"] < exact["kl"]
    assert exact["kl"] == pytest.approx(theirs["kl"] / minus_dt, rel=1e-4)
    assert 1 / minus_dt == pytest.approx(4.018, abs=1e-3)


@slow
def test_ddim_policy_refuses_the_flow_grpo_convention(tmp_path: Path) -> None:
    """A DDIM family has no Flow-GRPO ``std_dev_t``: refused before any model work."""
    torch.manual_seed(0)
    policy = DefaultDDPOStableDiffusionPipeline(MODEL)
    config = tiny_config(tmp_path / "run", kl_convention="flow_grpo", kl_coef=0.1)
    with pytest.raises(ValueError, match=r"kl_convention='flow_grpo'.*DefaultDDPOStable"):
        DDPOTrainer(config, brightness, Groups(), policy)
    assert not (tmp_path / "run").exists()


@slow
def test_asymmetric_clip_range(tmp_path: Path) -> None:
    """Equal bounds are the symmetric range (same weights); each bound clips its own side: the
    clip fractions with only the lower and only the upper bound in force add up to the
    symmetric one (the first optimizer step, at ratio 1, is the same in every run)."""
    runs = {
        "symmetric": {},
        "equal": {"train_clip_range_low": 1e-4, "train_clip_range_high": 1e-4},
        "lower": {"train_clip_range_high": 10.0},
        "upper": {"train_clip_range_low": 10.0},
    }
    out = {
        name: train(tmp_path / name, sd3_config(tmp_path / name, **kw)) for name, kw in runs.items()
    }
    (sym_m, sym_w, _, _), (eq_m, eq_w, _, _) = out["symmetric"], out["equal"]
    assert not _differs(sym_w, eq_w) and sym_m["loss"] == eq_m["loss"]
    assert sym_m["clip_fraction"] > 0
    lower, upper = out["lower"][0]["clip_fraction"], out["upper"][0]["clip_fraction"]
    assert lower + upper == pytest.approx(sym_m["clip_fraction"])
    assert lower > 0 and upper > 0
    assert _differs(out["lower"][1], sym_w) and _differs(out["upper"][1], sym_w)


@slow
@pytest.mark.parametrize("order", ["first", "random"])
def test_timestep_order(tmp_path: Path, order: str) -> None:
    """``"first"`` trains steps 0 and 1 of 3 (``int(3 * 0.67)``), in that order, for every
    sample of every micro-batch; ``"random"`` a random pair per sample (step 2 among them)."""
    config = sd3_config(
        tmp_path / "run",
        sample_num_steps=3,
        train_timestep_fraction=0.67,
        train_timestep_order=order,
    )
    _, _, _, spy = train(tmp_path / "run", config, recorder=True)
    assert spy is not None
    steps = [t.tolist() for _, t in spy.trained]
    assert len(steps) == 4  # 2 micro-batches x 2 steps
    if order == "first":
        assert steps == [[0, 0], [1, 1], [0, 0], [1, 1]]
    else:
        assert any(2 in s for s in steps) and any(s[0] != s[1] for s in steps)


@slow
@pytest.mark.parametrize(("reward", "dropped"), [(red_tied, 2), (all_tied, 2), (brightness, 0)])
def test_drop_zero_advantages_trains_only_nonzero(
    tmp_path: Path, reward: Callable[..., Any], dropped: int
) -> None:
    """The red group's tied rewards give advantages of 0: its two samples are not trained (4
    samples, 2 micro-batches: the 2 blue ones fill them). With every reward tied, 2 of the 4
    zero-advantage samples are kept to fill the 2 micro-batches. The metrics count the dropped."""
    config = sd3_config(tmp_path / "run", train_drop_zero_advantages=True)
    metrics, _, _, spy = train(tmp_path / "run", config, reward, recorder=True)
    assert spy is not None
    assert metrics["num_dropped_samples"] == dropped
    red, blue = (r[:, :-1].flatten(0, 1) for r in spy.rollouts)  # sampling batch = one group
    rows = [row for latents, _ in spy.trained for row in latents]
    if reward is red_tied:
        assert rows and all(any(torch.equal(row, b) for b in blue) for row in rows)
        assert not any(torch.equal(row, r) for row in rows for r in red)
    if dropped == 0:
        default, _, _, _ = train(tmp_path / "off", sd3_config(tmp_path / "off"), reward)
        assert "num_dropped_samples" not in default


@slow
def test_drop_zero_advantages_keeps_the_step_count(tmp_path: Path) -> None:
    """As Flow-GRPO rebatches: the 2 kept samples fill the epoch's 2 micro-batches, one each, so
    the run takes as many backward passes and optimizer steps as without dropping."""
    config = sd3_config(tmp_path / "run", train_drop_zero_advantages=True)
    metrics, _, _, spy = train(tmp_path / "run", config, red_tied, recorder=True)
    assert spy is not None
    assert [len(latents) for latents, _ in spy.trained] == [1, 1, 1, 1]  # 2 micro-batches x 2
    assert metrics["global_step"] == 2


@slow
def test_resume_with_every_option_is_exact(tmp_path: Path) -> None:
    """Two epochs in one run equal one epoch and a resumed second one, with every option on
    (the zero-advantage fill and the shuffles are seeded)."""
    options: dict[str, Any] = {
        "kl_coef": 0.1,
        "kl_convention": "flow_grpo",
        "train_drop_zero_advantages": True,
        "train_timestep_order": "first",
        "train_clip_range_low": 1e-4,
        "train_clip_range_high": 1e-3,
        "save_freq": 1,
    }
    _, whole, _, _ = train(
        tmp_path / "a", sd3_config(tmp_path / "a", num_epochs=2, **options), red_tied
    )
    train(tmp_path / "b", sd3_config(tmp_path / "b", num_epochs=1, **options), red_tied)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed_config = dataclasses.replace(
        sd3_config(None, num_epochs=2, **options), resume_from=str(tmp_path / "b")
    )
    _, resumed, _, _ = train(tmp_path / "b", resumed_config, red_tied)
    assert not _differs(whole, resumed)
    assert [m["loss"] for m in read_metrics(tmp_path / "a")] == [
        m["loss"] for m in read_metrics(tmp_path / "b")
    ]
