"""Gaussian diffusion used by MAR's per-token diffusion head."""

from lazygen.diffusion.gaussian import SpacedDiffusion, cosine_betas, space_timesteps

__all__ = ["SpacedDiffusion", "cosine_betas", "space_timesteps"]
