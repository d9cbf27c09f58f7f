"""Stable Diffusion 1.x/2.x: the policy, TRL's pipeline interface, the tiny model."""
