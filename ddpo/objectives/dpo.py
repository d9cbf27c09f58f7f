"""Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908) on the epoch's own samples (online):
each prompt's group gives preference pairs by reward, and the trained model learns to denoise
the preferred image better than the other, relative to the frozen reference
(`ddpo.core.diffusion_dpo_loss`), as the authors' ``train.py`` computes it
(SalesforceAIResearch/DiffusionDPO; read, not copied): one random training timestep and one
noise per pair, shared by its two images; the errors against the family's training target, so
epsilon, v and flow-velocity models train alike. A pair of equal rewards carries no preference
and weighs 0.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ddpo._seeds import derive_seed
from ddpo.core import diffusion_dpo_loss
from ddpo.objectives._forward import draw_noise
from ddpo.objectives.base import ObjectiveContext, ObjectiveLoss, ObjectiveNeeds
from ddpo.policy import Conditioning
from ddpo.samples import Trajectories

DPOPairs = Literal["best_worst", "halves", "all"]
"""How a prompt's group gives pairs: its best and worst sample; its better half against its
worse half, rank by rank (the best with the worst, the second with the second worst, ...); or
every two samples."""

LOSER_KEY, WEIGHT_KEY = "dpo_other_latents", "dpo_weight"
"""``Trajectories.extras`` of a pair's row (the preferred sample's): the other sample's clean
latents and the pair's weight (1, or 0 for equal rewards)."""


def preference_pairs(
    prompts: list[str], rewards: Tensor, *, pairs: DPOPairs = "best_worst"
) -> tuple[Tensor, Tensor]:
    """Preference pairs within each prompt's group (samples of the same prompt string), in
    the order of the prompts' first samples: ``(preferred, other)`` row indices.

    ``"best_worst"``: per group of two or more, its highest and lowest reward (the first of
    equal ones); ``"halves"``: the group sorted by reward (stable), its ``i``-th best against
    its ``i``-th worst for ``i`` below half its size; ``"all"``: every two samples of a group,
    the higher reward preferred.

    Raises:
        ValueError: if no prompt has two samples (Diffusion-DPO needs repeated prompts).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        groups[prompt].append(i)
    values = rewards.detach().float().cpu().tolist()
    preferred: list[int] = []
    other: list[int] = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        if pairs == "halves":
            ranked = sorted(rows, key=lambda i: -values[i])  # stable: ties keep their order
            for i in range(len(ranked) // 2):
                preferred.append(ranked[i])
                other.append(ranked[-1 - i])
        elif pairs == "best_worst":
            best = max(rows, key=lambda i: values[i])
            worst = min(rows, key=lambda i: values[i])
            if best == worst:  # all equal: the first and the last
                best, worst = rows[0], rows[-1]
            preferred.append(best)
            other.append(worst)
        else:
            for a in range(len(rows)):
                for b in range(a + 1, len(rows)):
                    i, j = rows[a], rows[b]
                    win, lose = (i, j) if values[i] >= values[j] else (j, i)
                    preferred.append(win)
                    other.append(lose)
    if not preferred:
        raise ValueError(
            "Diffusion-DPO found no prompt with two samples on this process: it pairs the "
            "samples of a prompt, so repeat each prompt (e.g. ddpo train --prompt_repeats 2 or "
            "more, or a prompt_function that returns each prompt several times in a row)"
        )
    return torch.tensor(preferred, dtype=torch.int64), torch.tensor(other, dtype=torch.int64)


@dataclass(frozen=True)
class DiffusionDPO:
    """Online Diffusion-DPO for `ddpo.trainer.DDPOTrainer` (see the module docstring).

    Attributes:
        beta: the KL weight (the paper's 5000 for SD 1.5, 2500 for SDXL).
        pairs: `DPOPairs`.
        num_train_timesteps: random timesteps per pair per inner epoch, one term each (1, the
            authors').
    """

    beta: float = 5000.0
    pairs: DPOPairs = "best_worst"
    num_train_timesteps: int = 1

    @property
    def needs(self) -> ObjectiveNeeds:
        """The clean final latents; no transitions."""
        return ObjectiveNeeds(transitions=False, final=True)

    def terms(self, kept_transitions: int) -> int:
        """One backward pass per trained timestep."""
        return self.num_train_timesteps

    def prepare_epoch(self, context: ObjectiveContext, samples: Trajectories) -> Trajectories:
        """One row per pair: the preferred sample's, with the other's clean latents and the
        pair's weight in ``extras``."""
        if samples.final_latents is None or samples.rewards is None:
            raise ValueError("Diffusion-DPO needs the samples' final latents and rewards")
        preferred, other = preference_pairs(samples.prompts, samples.rewards, pairs=self.pairs)
        device = samples.final_latents.device
        rewards = samples.rewards.detach().float()
        weight = rewards[preferred.to(rewards.device)] > rewards[other.to(rewards.device)]
        rows = samples.select(preferred.to(device))
        rows.extras[LOSER_KEY] = samples.final_latents[other.to(device)]
        rows.extras[WEIGHT_KEY] = weight.float().to(device)
        return rows

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """The DPO loss of the batch's pairs at one random timestep and noise each."""
        if batch.final_latents is None:
            raise ValueError("Diffusion-DPO.loss needs the batch's final latents")
        policy = context.policy
        preferred, other = batch.final_latents, batch.extras[LOSER_KEY]
        weight = batch.extras[WEIGHT_KEY]
        n = len(batch)
        generator = context.generator
        steps = torch.randint(policy.num_train_timesteps, (n,), generator=generator)
        t = steps.to(device=preferred.device, dtype=torch.float32)
        noise = draw_noise(preferred, generator)
        clean = torch.cat([preferred, other])
        both_noise, both_t = torch.cat([noise, noise]), torch.cat([t, t])
        x_t = policy.add_noise(clean, both_noise, both_t)
        target = policy.training_target(clean, both_noise, both_t)
        conditioning = Conditioning.cat([batch.conditioning, batch.conditioning])
        with context.autocast():
            prediction = policy.predict(conditioning, x_t, both_t, denoiser=context.denoiser)
        with context.reference():
            reference = policy.predict(conditioning, x_t, both_t)
        out = diffusion_dpo_loss(
            prediction[:n].float(),
            prediction[n:].float(),
            reference[:n].float(),
            reference[n:].float(),
            target[:n].float(),
            target[n:].float(),
            beta=self.beta,
        )
        total = weight.sum()
        loss = (out.loss * weight).sum() / total.clamp(min=1.0)
        counted = total.clamp(min=1.0)
        metrics = {
            "implicit_accuracy": ((out.logit.detach() > 0).float() * weight).sum() / counted,
            "model_diff": (out.model_diff.detach() * weight).sum() / counted,
            "reference_diff": (out.reference_diff * weight).sum() / counted,
            "pairs_with_preference": weight.mean(),
            "loss": loss.detach(),
        }
        return ObjectiveLoss(loss, metrics)


@dataclass(frozen=True)
class OfflineDiffusionDPO(DiffusionDPO):
    """Diffusion-DPO on a preference data set (the paper's setting: Pick-a-Pic), through
    `ddpo.trainer.DDPOTrainer`: nothing is sampled or rewarded; each epoch trains on the next
    ``sample_batch_size * sample_num_batches_per_epoch`` pairs per process of a seeded
    permutation of the data set (a fresh one each pass over it, the same on every process,
    the processes taking alternate pairs), so that a resumed run continues exactly.

    Build it with `from_latents` from `ddpo.data.encode_preference_pairs`'s result.

    Attributes:
        prompts: each pair's prompt.
        preferred, other: each pair's final latents (the policy's ``encode_images``), on the CPU.
    """

    prompts: tuple[str, ...] = ()
    preferred: Tensor | None = field(default=None, repr=False)
    other: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.preferred is None or self.other is None or not self.prompts:
            raise ValueError("OfflineDiffusionDPO needs at least one pair (prompts, latents)")
        shapes = {tuple(self.preferred.shape), tuple(self.other.shape)}
        if len(shapes) != 1 or self.preferred.shape[0] != len(self.prompts):
            raise ValueError(
                f"OfflineDiffusionDPO: {len(self.prompts)} prompts, preferred latents "
                f"{tuple(self.preferred.shape)} and other latents {tuple(self.other.shape)} "
                "must have one row per pair"
            )

    @classmethod
    def from_latents(
        cls, latents: tuple[list[str], Tensor, Tensor], **settings: object
    ) -> "OfflineDiffusionDPO":
        """From ``(prompts, preferred, other)`` (`ddpo.data.PreferenceLatents`) and the
        settings of `DiffusionDPO` (``beta``, ``num_train_timesteps``)."""
        prompts, preferred, other = latents
        return cls(prompts=tuple(prompts), preferred=preferred, other=other, **settings)  # type: ignore[arg-type]

    @property
    def needs(self) -> ObjectiveNeeds:
        """No rollout: the epoch's rows are the data set's (`epoch_rows`)."""
        return ObjectiveNeeds(transitions=False, final=True, rollout=False)

    def prepare_epoch(self, context: ObjectiveContext, samples: Trajectories) -> Trajectories:
        """The rows are pairs already."""
        return samples

    def epoch_rows(self, context: ObjectiveContext) -> Trajectories:
        """This process's pairs of epoch ``context.epoch``: rows of the preferred images, the
        other images' latents in ``extras``, every pair weighing 1."""
        assert self.preferred is not None and self.other is not None
        n, per_process = len(self.prompts), context.rows_per_epoch
        if per_process <= 0:
            raise ValueError(f"rows_per_epoch must be > 0, got {per_process}")
        total = per_process * context.num_processes
        positions = torch.arange(context.epoch * total, (context.epoch + 1) * total)
        positions = positions[context.process_index :: context.num_processes]
        passes = positions // n
        index = torch.empty_like(positions)
        for p in passes.unique().tolist():
            # each pass over the data in its own order, the same on every process
            generator = torch.Generator().manual_seed(derive_seed(context.seed_keys[0], p))
            order = torch.randperm(n, generator=generator)
            chosen = passes == p
            index[chosen] = order[positions[chosen] % n]
        prompts = [self.prompts[i] for i in index.tolist()]
        with torch.no_grad():
            conditioning = context.policy.encode(prompts, "")
        device = next(iter(conditioning.tensors.values())).device
        preferred = self.preferred[index].to(device)
        rows = len(prompts)
        no_steps = torch.zeros(rows, 0, *preferred.shape[1:], device=device)
        return Trajectories(
            prompts=prompts,
            conditioning=conditioning,
            timesteps=torch.zeros(rows, 0, dtype=torch.int64, device=device),
            latents=no_steps,
            next_latents=no_steps,
            log_probs=torch.zeros(rows, 0, device=device),
            schedule=torch.zeros(rows, 0, 0, device=device),
            final_latents=preferred,
            extras={
                LOSER_KEY: self.other[index].to(device),
                WEIGHT_KEY: torch.ones(rows, device=device),
            },
        )


__all__ = [
    "LOSER_KEY",
    "WEIGHT_KEY",
    "DPOPairs",
    "DiffusionDPO",
    "OfflineDiffusionDPO",
    "preference_pairs",
]
