"""Counts the graph breaks of one family's sampling and training steps (run by
``test_speed.py`` in a fresh interpreter, as a user runs: without the test suite's runtime type
checking, whose wrappers torch.compile does not trace; not a test file).

Usage: ``graph_breaks_worker.py MODEL...`` prints one JSON object, model -> report: for
``sampling`` (the policy's ``score`` with guidance, no gradient: the sampling step's
computation) and ``training`` (``score`` with the PPO loss and the KL term), the graph and
graph-break counts of ``torch._dynamo.explain`` and the break reasons.
"""

import json
import sys
from collections.abc import Callable
from typing import Any

import torch

from ddpo.adapters import load_policy
from ddpo.core import gaussian_kl, ppo_clip_loss

PROMPTS = ["a red circle", "a blue square"]


def first_transition(policy: Any, *, seed: int = 7) -> tuple[Any, Callable[[], Any]]:
    """A seeded 3-step guided rollout of `PROMPTS`, and a call that re-scores its first
    transition with guidance (``policy.score``)."""
    conditioning = policy.encode(PROMPTS, "")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = policy.rollout(conditioning, num_steps=3, guidance_scale=5.0, generator=generator)
    latents = out.latents
    schedule = out.schedule[:1].repeat(len(PROMPTS), 1)  # the first transition's row

    def score() -> Any:
        return policy.score(conditioning, latents[:, 0], latents[:, 1], schedule, cfg=True)

    return out, score


def main(model: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = load_policy(model)
    policy.prepare(torch.device("cpu"), gradient_checkpointing=False)
    out, score = first_transition(policy)
    batch = len(PROMPTS)

    def train_step() -> torch.Tensor:
        step = score()
        ppo = ppo_clip_loss(
            step.log_prob.float(), out.log_probs[:, 0], torch.ones(batch), clip_range=1e-4
        )
        kl = gaussian_kl(step.mean.float(), step.mean.detach().float(), step.std_dev.float())
        return ppo.loss + kl.mean()

    with torch.no_grad():
        sampling = torch._dynamo.explain(score)()
    training = torch._dynamo.explain(train_step)()
    return {
        name: {
            "graphs": report.graph_count,
            "breaks": report.graph_break_count,
            "reasons": [r.reason.splitlines()[0] for r in report.break_reasons],
        }
        for name, report in (("sampling", sampling), ("training", training))
    }


if __name__ == "__main__":
    print(json.dumps({model: main(model) for model in sys.argv[1:]}))
