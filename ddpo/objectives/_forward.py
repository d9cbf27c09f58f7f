"""What the forward-process objectives (DiffusionNFT, AWM, Diffusion-DPO) share: the policy's
optional members they need, its sampling timesteps, and noise drawn as data."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ddpo.policy import DiffusionPolicy, policy_option


def required_member(policy: Any, name: str, algorithm: str) -> Callable[..., Any]:
    """The policy's optional member ``name`` (`ddpo.policy.PolicyOptions`).

    Raises:
        TypeError: naming the policy, the member and the algorithm, where it has none.
    """
    member = policy_option(policy, name)
    if not callable(member):
        raise TypeError(
            f"{algorithm} needs the policy's {name}() (see ddpo.policy.PolicyOptions); "
            f"{type(policy).__name__} has none: use a family of ddpo.adapters (both of its "
            "bases have it) or add it to the policy"
        )
    return member


def sampling_timesteps(policy: DiffusionPolicy, num_steps: int, algorithm: str) -> Tensor:
    """The timesteps a rollout of ``num_steps`` steps visits (float, CPU, ``(num_steps,)``)."""
    member = required_member(policy, "sampling_timesteps", algorithm)
    return member(num_steps).detach().to("cpu", torch.float32)


class SamplingTimesteps:
    """The sampler's timesteps of ``num_steps`` steps (`sampling_timesteps`), asked of the
    policy once and kept: asking copies its scheduler and sets its timesteps, work that need not
    run per micro-batch. An objective trains one policy, so one table serves it."""

    def __init__(self, num_steps: int, algorithm: str) -> None:
        self.num_steps, self.algorithm = num_steps, algorithm
        self._table: Tensor | None = None

    def __call__(self, policy: DiffusionPolicy) -> Tensor:
        """The table (float, CPU, ``(num_steps,)``); TypeError where the policy has none."""
        if self._table is None:
            self._table = sampling_timesteps(policy, self.num_steps, self.algorithm)
        return self._table


def draw_noise(like: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise of ``like``'s shape, drawn on the CPU by ``generator`` (the same
    numbers on every device), in ``like``'s dtype and on its device."""
    noise = torch.randn(like.shape, generator=generator, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def per_sample_mean(values: Tensor) -> Tensor:
    """The mean over every dimension but the first."""
    return values.mean(dim=tuple(range(1, values.ndim)))
