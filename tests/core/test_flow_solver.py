"""`ddpo.core.flow_dpm_solver_step` against diffusers' ``DPMSolverMultistepScheduler`` (flow
sigmas, DPM-Solver++ of order 2), and its first order against Euler's step."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpo.core import flow_dpm_solver_step


def _velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear stand-in for a flow model's velocity."""
    return torch.tanh(1.5 * x) * (0.5 + sigma) - 0.3 * x.roll(1, dims=-1)


@settings(max_examples=12, deadline=None)
@given(
    steps=st.integers(2, 30),
    shift=st.sampled_from([1.0, 3.0, 5.0]),
    solver_type=st.sampled_from(["midpoint", "heun"]),
    seed=st.integers(0, 2**16),
)
def test_the_trajectory_is_diffusers_dpm_solver_plus_plus(
    steps: int, shift: float, solver_type: str, seed: int
) -> None:
    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
        solver_order=2, algorithm_type="dpmsolver++", solver_type=solver_type,
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.to(torch.float32)
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    theirs, ours = x0.clone(), x0.clone()
    previous: tuple[torch.Tensor, torch.Tensor] | None = None
    for i, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(_velocity(theirs, sigmas[i]), t, theirs).prev_sample
        sigma, sigma_next = sigmas[i].expand(3), sigmas[i + 1].expand(3)
        step = flow_dpm_solver_step(
            _velocity(ours, sigmas[i]), ours, sigma, sigma_next,
            previous_clean=None if previous is None else previous[0],
            sigma_previous=None if previous is None else previous[1],
            solver_type=solver_type,  # type: ignore[arg-type]
        )  # fmt: skip
        ours, previous = step.prev_sample, (step.clean, sigma)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5), (ours - theirs).abs().max()


def test_the_first_order_is_eulers_step_and_the_second_differs() -> None:
    g = torch.Generator().manual_seed(0)
    x, v, earlier = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    sigma, sigma_next = torch.tensor([0.8, 0.6]), torch.tensor([0.5, 0.3])
    first = flow_dpm_solver_step(v, x, sigma, sigma_next)
    euler = x + (sigma_next - sigma).view(2, 1, 1, 1) * v
    assert torch.allclose(first.prev_sample, euler, atol=1e-5)
    assert torch.allclose(first.clean, x - sigma.view(2, 1, 1, 1) * v)
    second = flow_dpm_solver_step(
        v, x, sigma, sigma_next, previous_clean=earlier, sigma_previous=torch.tensor([0.9, 0.7])
    )
    assert not torch.allclose(second.prev_sample, first.prev_sample, atol=1e-3)
    # To sigma 0 the step is first order whatever it is given: the clean estimate.
    final = flow_dpm_solver_step(
        v, x, sigma, torch.zeros(2), previous_clean=earlier, sigma_previous=torch.full((2,), 0.9)
    )
    assert torch.allclose(final.prev_sample, first.clean, atol=1e-6)


def test_its_gradients_are_finite_differences_even_at_the_end() -> None:
    g = torch.Generator().manual_seed(1)
    x, v, earlier = (torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x.requires_grad_(True)
    v.requires_grad_(True)
    for sigma_next in (torch.tensor([0.3, 0.2], dtype=torch.float64), torch.zeros(2).double()):

        def step(x: torch.Tensor, v: torch.Tensor, sn: torch.Tensor = sigma_next) -> torch.Tensor:
            return flow_dpm_solver_step(
                v, x, torch.tensor([0.6, 0.5], dtype=torch.float64), sn, previous_clean=earlier,
                sigma_previous=torch.tensor([0.8, 0.7], dtype=torch.float64),
            ).prev_sample  # fmt: skip

        assert torch.autograd.gradcheck(step, (x, v))


def test_bad_arguments_are_named() -> None:
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"solver_type must be 'midpoint' or 'heun', got 'rk4'"):
        flow_dpm_solver_step(x, x, torch.tensor([0.5]), torch.tensor([0.2]), solver_type="rk4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"previous_clean and sigma_previous together"):
        flow_dpm_solver_step(x, x, torch.tensor([0.5]), torch.tensor([0.2]), previous_clean=x)
    with pytest.raises(ValueError, match=r"0 <= sigma_next < sigma < 1, got sigma=\[1.0\]"):
        flow_dpm_solver_step(x, x, torch.tensor([1.0]), torch.tensor([0.2]))
