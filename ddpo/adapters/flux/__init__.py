"""FLUX.1: the policy, its text encoding, folder checks, the tiny model."""
