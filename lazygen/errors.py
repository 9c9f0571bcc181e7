"""User-facing errors.

Every mistake a user can make (a bad config value, a missing or corrupted checkpoint) is raised as a
:class:`LazygenError` where the bad value enters. The CLI prints its message as one paragraph and exits
non-zero, without a traceback, so the message itself must name the problem *and* the fix.
"""

from __future__ import annotations

import warnings


class LazygenError(Exception):
    """A problem caused by the user's input; the message says what is wrong and how to fix it."""


class ConfigError(LazygenError):
    """An invalid or incompatible configuration value."""


class CheckpointError(LazygenError):
    """A checkpoint that is missing, unreadable or does not match the network."""


def require(condition: bool, message: str) -> None:
    """Raise a ConfigError with ``message`` (which names the key and the fix) unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def require_one_of(key: str, value: object, allowed: tuple) -> None:
    """``key=value`` must be one of ``allowed``; the error lists the choices."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, allowed))}.")


class ConfigWarning(UserWarning):
    """A setting that runs but does less than it says (a capped budget, a no-op option); the CLI shows it as
    one paragraph naming the key, the value that takes effect and what to set instead."""


def advise(message: str) -> None:
    """Warn (:class:`ConfigWarning`) that a setting is capped or does nothing; ``message`` names the key."""
    warnings.warn(message, ConfigWarning, stacklevel=2)
