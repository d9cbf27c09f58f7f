"""Stable Diffusion 3/3.5: the policy, its folder checks, the tiny model."""
