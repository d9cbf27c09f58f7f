"""Qwen-Image: the policy, its text encoding and true guidance, folder checks, the tiny model."""
