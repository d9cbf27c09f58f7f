"""The DDIM base of the Stable Diffusion families: sampling with log-probs and the scheduler
tables."""
