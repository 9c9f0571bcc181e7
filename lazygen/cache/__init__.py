"""Cache policies: what computation is reused, and when."""

from lazygen.cache.base import CachePolicy, CacheStats, CausalPolicy, MARPolicy, NoCache, StepContext

__all__ = ["CachePolicy", "CacheStats", "CausalPolicy", "MARPolicy", "NoCache", "StepContext"]
