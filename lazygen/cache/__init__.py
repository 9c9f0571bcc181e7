"""Cache policies: what computation is reused, and when."""

from lazygen.cache.base import CachePolicy, CacheStats, NoCache, StepContext

__all__ = ["CachePolicy", "CacheStats", "NoCache", "StepContext"]
