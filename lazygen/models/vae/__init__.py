"""Image tokenizers: the KL-16 autoencoder that MAR encodes images with and decodes its tokens through."""

from lazygen.models.vae.kl import LATENT_SCALE, AutoencoderKL, DiagonalGaussian

__all__ = ["AutoencoderKL", "DiagonalGaussian", "LATENT_SCALE"]
