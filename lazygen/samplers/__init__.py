"""Samplers: the order and schedule of decoding."""

from lazygen.samplers.mar import MARSampler, MARSamplerConf, mask_schedule

__all__ = ["MARSampler", "MARSamplerConf", "mask_schedule"]
