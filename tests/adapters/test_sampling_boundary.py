"""The sampling side of the policy boundary, for every family (SD, SDXL, SD3, FLUX.1-dev,
Qwen-Image, Wan2.1 text-to-video): ``rollout`` records each transition's schedule row and
``score`` re-scores a transition from its row alone (whatever was sampled since); rollouts keep
the graph of their last ``grad_steps`` steps; the image size is per call; DDIM's ``eta`` belongs
to the policy; the initial noise may be drawn per row.

One suite over the six tiny families, each policy with fresh LoRA adapters (session fixtures: a
test restores what it sets and leaves the weights and their gradients as they were). Latents are
``(batch, C, h, w)`` or Wan's video latents ``(batch, C, frames, h, w)``, samples images
``(batch, 3, H, W)`` or Wan's videos ``(batch, frames, 3, H, W)`` (``FRAMES``).
"""

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ddpo.adapters import DefaultDDPOStableDiffusionPipeline, DefaultDDPOStableDiffusionXLPipeline
from ddpo.adapters.common import sampling
from ddpo.policy import Conditioning, DiffusionPolicy, PolicyRollout

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
FAMILIES = ("sd", "sdxl", "sd3", "flux", "qwenimage", "wan")
DDIM_FAMILIES = ("sd", "sdxl")
COLUMNS = {"sd": 4, "sdxl": 4, "sd3": 5, "flux": 5, "qwenimage": 5, "wan": 5}
SIZE_MULTIPLE = {"sd": 8, "sdxl": 8, "sd3": 16, "flux": 16, "qwenimage": 16, "wan": 16}
"""What an image side must be a multiple of (the tiny models' VAE factor is 8; SD3's and Wan's
patch size and FLUX's and Qwen-Image's packing are 2)."""
FRAMES = {"wan": (5,)}
"""The frame axis of a family's samples (the tiny Wan's 5 frames); ``()`` for images."""


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def policy(family: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    name = {"sd": "lora_pipeline"}.get(family, f"{family}_policy")
    shared = request.getfixturevalue(name)
    eta = getattr(shared, "eta", None)
    yield shared
    if eta is not None:
        shared.eta = eta
    for param in shared.denoiser.parameters():
        param.grad = None


_ENCODED: weakref.WeakKeyDictionary[Any, Conditioning] = weakref.WeakKeyDictionary()


def encoded(policy: Any) -> Conditioning:
    """``policy.encode(PROMPTS, "")``, once per policy (its text encoders are frozen; Wan's
    512-token UMT5 costs about half a rollout), reused as the trainer reuses its prompt cache."""
    if policy not in _ENCODED:
        _ENCODED[policy] = policy.encode(PROMPTS, "")
    return _ENCODED[policy]


def rollout(policy: Any, seed: int, **kwargs: Any) -> PolicyRollout:
    kwargs.setdefault("num_steps", 3)
    kwargs.setdefault("guidance_scale", 1.0)
    out: PolicyRollout = policy.rollout(
        encoded(policy), generator=torch.Generator().manual_seed(seed), **kwargs
    )
    return out


def scores(policy: Any, out: PolicyRollout, *, cfg: bool = True) -> Tensor:
    """``score`` of every recorded transition, one call per step as the trainer calls it,
    ``(batch, K)``."""
    conditioning = encoded(policy)
    batch = len(PROMPTS)
    with torch.no_grad():
        columns = [
            policy.score(
                conditioning,
                out.latents[:, j],
                out.latents[:, j + 1],
                out.schedule[j].expand(batch, -1),
                cfg=cfg,
            ).log_prob
            for j in range(out.log_probs.shape[1])
        ]
    return torch.stack(columns, dim=1)


def test_every_family_implements_the_boundary(policy: Any) -> None:
    assert isinstance(policy, DiffusionPolicy)


# ---- schedule rows and re-scoring -------------------------------------------------------------


def test_a_rollout_records_one_schedule_row_per_transition(policy: Any, family: str) -> None:
    out = rollout(policy, 0, num_steps=3, guidance_scale=2.5)
    steps = policy.transitions_per_rollout(3)
    assert out.schedule.dtype == torch.float64
    assert out.schedule.shape == (steps, COLUMNS[family])
    assert out.schedule[:, -1].eq(2.5).all()  # the guidance scale, last in every family's row
    if family in DDIM_FAMILIES:  # [t, t_prev, eta, guidance_scale]
        t = policy.scheduler.timesteps
        assert torch.equal(out.schedule[:, 0], t.double())
        step = policy.scheduler.config.num_train_timesteps // 3
        assert torch.equal(out.schedule[:, 1], (t - step).double())
        assert out.schedule[:, 2].eq(policy.eta).all()
        assert out.final_latents is None
        final = out.latents[:, -1]
    else:  # [timestep, sigma, sigma_next, sigma_max, guidance_scale]; the window is every step
        sigmas = policy.scheduler.sigmas.double()
        assert torch.equal(out.schedule[:, 1], sigmas[:-1])
        assert torch.equal(out.schedule[:, 2], sigmas[1:])
        assert torch.equal(out.schedule[:, 0], policy.scheduler.timesteps.double())
        assert out.final_latents is not None
        assert torch.equal(out.final_latents, out.latents[:, -1])
        final = out.final_latents
    # the images (Wan: videos) are the decoded final latents
    assert out.images.shape[:-3] == (2, *FRAMES.get(family, ()))
    with torch.no_grad():
        torch.testing.assert_close(out.images, policy.decode(final))


def test_a_stored_batch_scores_the_same_after_another_rollout(policy: Any, family: str) -> None:
    """The transitions of one rollout, re-scored after a rollout with another step count, image
    size, guidance scale (and, for DDIM, another ``eta``), give the same log-probs bit for bit:
    ``score`` reads nothing that the last rollout set."""
    stored = rollout(policy, 0, num_steps=3, guidance_scale=2.0)
    before = scores(policy, stored)
    if family in DDIM_FAMILIES:
        policy.eta = 0.5
    side = 64 - SIZE_MULTIPLE[family]  # smaller than the resolution: cheaper
    other = rollout(policy, 1, num_steps=4, guidance_scale=4.0, height=side, width=64)
    assert other.images.shape[-2:] == (side, 64)
    assert torch.equal(scores(policy, stored), before)


@pytest.mark.parametrize(
    ("guidance", "cfg"),
    [(4.0, True), (1.0, True), (1.0, False)],
    ids=["guided-cfg", "unguided-cfg", "unguided-no-cfg"],
)
def test_rescoring_the_rollouts_transitions_gives_ratio_one(
    policy: Any, guidance: float, cfg: bool
) -> None:
    out = rollout(policy, 3, num_steps=4, guidance_scale=guidance)
    torch.testing.assert_close(scores(policy, out, cfg=cfg), out.log_probs, atol=1e-5, rtol=0)


def test_embedded_guidance_rescores_with_ratio_one_without_cfg(flux_policy: Any) -> None:
    """FLUX.1-dev's guidance is an input of its one pass: ``cfg=False`` is the same policy."""
    out = rollout(flux_policy, 4, guidance_scale=3.5)
    torch.testing.assert_close(
        scores(flux_policy, out, cfg=False), out.log_probs, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "qwenimage", "wan"])
def test_where_values_cost_a_read_unguided_rows_keep_the_conditional_prediction(
    policy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an accelerator or under ``torch.compile`` ``score`` cannot read the rows' guidance
    scales: with ``cfg`` it runs the unconditional pass, and rows sampled at 1 still score the
    conditional prediction they were sampled with (a batch mixing guided and unguided rows)."""
    unguided = rollout(policy, 5, guidance_scale=1.0)
    guided = rollout(policy, 6, guidance_scale=3.0)
    monkeypatch.setattr(sampling, "values_checkable", lambda *tensors: False)
    conditioning = policy.encode(PROMPTS[:1] * 2, "")
    with torch.no_grad():
        score = policy.score(
            conditioning,
            torch.cat([unguided.latents[:1, 1], guided.latents[:1, 1]]),
            torch.cat([unguided.latents[:1, 2], guided.latents[:1, 2]]),
            torch.stack([unguided.schedule[1], guided.schedule[1]]),
        )
    expected = torch.stack([unguided.log_probs[0, 1], guided.log_probs[0, 1]])
    torch.testing.assert_close(score.log_prob, expected, atol=1e-5, rtol=0)


def test_schedule_rows_of_the_wrong_shape_or_type_are_refused(policy: Any, family: str) -> None:
    out = rollout(policy, 0)
    args = (encoded(policy), out.latents[:, 0], out.latents[:, 1])
    columns = COLUMNS[family]
    with pytest.raises(ValueError, match=rf"schedule must be \(2, {columns}\).*got shape \(2, 3\)"):
        policy.score(*args, out.schedule[0].expand(2, -1)[:, :3])
    # a batch or a dtype that disagrees: jaxtyping's check in the tests, the policy's otherwise
    with pytest.raises((ValueError, TypeError), match=r"schedule"):
        policy.score(*args, out.schedule[:1])
    with pytest.raises(TypeError, match=r"schedule"):
        policy.score(*args, out.schedule[0].expand(2, -1).long())
    with pytest.raises(ValueError, match=rf"schedule must be \(2, {columns}\).*got shape \(1, "):
        sampling.check_schedule(out.schedule[:1], args[1], ("x",) * columns, family)
    with pytest.raises(TypeError, match=r"schedule must be a floating-point tensor.*int64"):
        sampling.check_schedule(out.schedule.long(), args[1], ("x",) * columns, family)


# ---- gradients through the last steps ---------------------------------------------------------


def test_grad_steps_keep_the_graph_of_the_last_steps(policy: Any) -> None:
    plain = rollout(policy, 7, guidance_scale=2.0)
    assert not plain.images.requires_grad and plain.images.grad_fn is None

    kept = rollout(policy, 7, guidance_scale=2.0, grad_steps=2)
    assert kept.images.requires_grad and kept.images.dtype == torch.float32
    images = kept.images.detach()
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # the same samples as without gradients, for the same generator
    torch.testing.assert_close(kept.images.detach(), plain.images, atol=1e-6, rtol=0)
    torch.testing.assert_close(kept.latents.detach(), plain.latents, atol=1e-6, rtol=0)
    torch.testing.assert_close(kept.log_probs.detach(), plain.log_probs, atol=1e-6, rtol=0)

    kept.images.mean().backward()
    grads = {n: p.grad for n, p in policy.denoiser.named_parameters() if p.requires_grad}
    assert grads and all("lora" in name for name in grads)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads.values())


def test_grad_steps_are_those_of_the_last_steps_only(policy: Any) -> None:
    """With one kept step, the latents before the last step do not depend on the trainable
    parameters in the graph; the final latents do."""
    out = rollout(policy, 8, grad_steps=1)
    params = [p for p in policy.denoiser.parameters() if p.requires_grad]
    final = out.final_latents if out.final_latents is not None else out.latents[:, -1]
    before = torch.autograd.grad(
        out.latents[:, -2].sum(), params, allow_unused=True, retain_graph=True
    )
    assert all(g is None or not bool(g.any()) for g in before)
    after = torch.autograd.grad(final.sum(), params, allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in after)


@pytest.mark.parametrize("grad_steps", [-1, 4, True])
def test_grad_steps_outside_zero_to_num_steps_are_refused(policy: Any, grad_steps: Any) -> None:
    with pytest.raises(ValueError, match=rf"grad_steps must be an int in \[0, num_steps=3\].*"
                                         rf"got grad_steps={grad_steps!r}"):  # fmt: skip
        rollout(policy, 0, num_steps=3, grad_steps=grad_steps)
    with pytest.raises((ValueError, TypeError), match="grad_steps"):  # the type: jaxtyping's
        rollout(policy, 0, num_steps=3, grad_steps=1.5)  # check in the tests, the policy's else


# ---- the image size per call ------------------------------------------------------------------


def test_height_and_width_per_call_give_images_of_that_size(policy: Any, family: str) -> None:
    height, width = 64 + SIZE_MULTIPLE[family], 64 - SIZE_MULTIPLE[family]
    frames = FRAMES.get(family, ())
    out = rollout(policy, 0, num_steps=2, height=height, width=width)
    assert out.images.shape == (2, *frames, 3, height, width)
    assert out.latents.shape[-2:] == (height // 8, width // 8)
    torch.testing.assert_close(scores(policy, out), out.log_probs, atol=1e-5, rtol=0)

    called = policy(PROMPTS[0], num_inference_steps=2, height=height, width=width,
                    output_type="pt")  # fmt: skip
    assert called.images.shape == (1, *frames, 3, height, width)
    default = rollout(policy, 0, num_steps=2).images  # the resolution
    assert default.shape == (2, *frames, 3, 64, 64)


@pytest.mark.parametrize(
    ("sizes", "name"),
    [
        ({"height": 0}, "height"),
        ({"width": -16}, "width"),
        ({"height": 68}, "height"),
        ({"height": True}, "height"),
    ],
)
def test_bad_heights_and_widths_are_refused_naming_them(
    policy: Any, family: str, sizes: dict[str, Any], name: str
) -> None:
    multiple = SIZE_MULTIPLE[family]
    with pytest.raises(ValueError, match=rf"{name} must be a positive multiple of {multiple} "
                                         rf"pixels.*got {name}="):  # fmt: skip
        rollout(policy, 0, **sizes)
    with pytest.raises(ValueError, match=rf"{name} must be a positive multiple of {multiple}"):
        policy(PROMPTS[0], num_inference_steps=2, output_type="pt", **sizes)


# ---- DDIM's eta belongs to the policy ---------------------------------------------------------


@pytest.mark.parametrize("family", DDIM_FAMILIES)
def test_eta_is_the_ddim_policys_own(policy: Any) -> None:
    assert policy.eta == 1.0 and policy.uses_sample_eta
    one = rollout(policy, 9)
    policy.eta = 0.5
    half = rollout(policy, 9)
    assert half.schedule[:, 2].eq(0.5).all() and one.schedule[:, 2].eq(1.0).all()
    assert not torch.allclose(half.latents[:, 1:], one.latents[:, 1:])  # the sampler uses it
    torch.testing.assert_close(scores(policy, half), half.log_probs, atol=1e-5, rtol=0)
    # the same trajectory as the pipeline's own call with eta=0.5
    conditioning = encoded(policy)
    call = {"num_inference_steps": 3, "guidance_scale": 1.0, "eta": 0.5, "output_type": "pt"}
    generator = torch.Generator().manual_seed(9)
    if isinstance(policy, DefaultDDPOStableDiffusionPipeline):
        embeds = conditioning["prompt_embeds"]
        called = policy(prompt_embeds=embeds, generator=generator, **call)
    else:
        called = policy(PROMPTS, generator=generator, **call)
    assert torch.equal(called.latents, half.latents)


@pytest.mark.parametrize("family", DDIM_FAMILIES)
@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -1.0, float("nan"), True])
def test_a_bad_eta_is_refused_and_the_old_one_kept(policy: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"eta must be in \(0, 1\].*got eta="):
        policy.eta = bad
    with pytest.raises((ValueError, TypeError), match=r"eta|value"):
        policy.eta = "1"
    assert policy.eta == 1.0


@pytest.mark.parametrize(
    ("policy_class", "path"),
    [
        (DefaultDDPOStableDiffusionPipeline, "tiny_path"),
        (DefaultDDPOStableDiffusionXLPipeline, "sdxl_path"),
    ],
    ids=["sd", "sdxl"],
)
def test_the_constructor_takes_eta_and_refuses_a_bad_one(
    policy_class: Any, path: str, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(path)
    with pytest.raises(ValueError, match=r"eta must be in \(0, 1\].*got eta=2\.0"):
        policy_class(folder, eta=2.0)
    assert policy_class(folder, eta=0.25).eta == 0.25


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in DDIM_FAMILIES])
def test_flow_policies_have_no_sample_eta(policy: Any) -> None:
    assert not policy.uses_sample_eta


# ---- the initial noise per row ----------------------------------------------------------------


def test_initial_noise_generators_draw_each_rows_x_T(policy: Any, family: str) -> None:
    """Row ``i``'s ``x_T`` is the first draw of ``initial_noise_generators[i]`` (two rows with
    equally seeded generators start alike); the steps' noise still comes from ``generator``."""

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (11, 11)]

    out = rollout(policy, 0, initial_noise_generators=generators())
    x_T = out.latents[:, 0]
    assert torch.equal(x_T[0], x_T[1])
    shape = (2, *out.latents.shape[2:])
    expected = randn_tensor(shape, generator=generators(), dtype=torch.float32)
    assert torch.equal(x_T, expected)
    torch.testing.assert_close(scores(policy, out), out.log_probs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"initial_noise_generators must hold one generator per "
                                         r"row \(2\), got 1"):  # fmt: skip
        rollout(policy, 0, initial_noise_generators=generators()[:1])
