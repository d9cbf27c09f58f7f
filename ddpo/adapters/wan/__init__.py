"""Wan2.1 text-to-video: the policy, its text encoding, VAE, folder checks, the tiny model."""
