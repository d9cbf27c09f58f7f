"""The flow-matching base of SD3 and FLUX: Flow-GRPO's SDE window, the ODE sampler, the
schedule and the folder checks they share."""
