"""Stable Diffusion XL base: the policy, its text encoding, folder checks, the tiny model."""
