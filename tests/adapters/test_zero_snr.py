"""Sampling the packaged zero-terminal-SNR model (``alpha_bar = 0`` at the first step)."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_packaged_model_samples_finite_non_black_images_at_ten_steps() -> None:
    """Regression: at 10 steps with ``eta = 1`` the first step's ``1 - alpha_bar_prev -
    sigma_t^2`` used to round to -6e-8, making every latent and log-prob NaN and every image
    black (the README example failed with "gradient norm is nan")."""
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-shapes")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert float(pipe.scheduler.alphas_cumprod[-1]) == 0.0
    out = pipe(
        ["a red circle"],
        num_inference_steps=10,
        eta=1.0,
        guidance_scale=3.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert int(pipe.scheduler.timesteps[0]) == 999
    assert out.latents.shape[:2] == (1, 11) and out.log_probs.shape == (1, 10)
    assert bool(torch.isfinite(out.latents).all())
    assert bool(torch.isfinite(out.log_probs).all())
    assert bool(torch.isfinite(out.images).all())
    assert float(out.images.amax()) > 0.5  # not black: the shape is drawn
    # the boundary's rollout records each step's row; re-scoring from them gives ratio 1
    conditioning = pipe.encode(["a red circle"], "")
    trajectory = pipe.rollout(
        conditioning, num_steps=10, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(trajectory.latents, out.latents)
    assert float(trajectory.schedule[0, 0]) == 999 and float(trajectory.schedule[-1, 1]) < 0
    with torch.no_grad():
        scored = [
            pipe.score(conditioning, out.latents[:, j], out.latents[:, j + 1],
                       trajectory.schedule[j : j + 1]).log_prob
            for j in range(10)
        ]  # fmt: skip
    torch.testing.assert_close(torch.stack(scored, dim=1), out.log_probs, atol=1e-5, rtol=0)
