"""Errors the user can fix. Each prints as one line naming the thing and the fix."""
from __future__ import annotations


class SlidestreamError(Exception):
    """Base class: ``str(err)`` is the one-line message shown by the CLI."""

    exit_code = 2


class ConfigError(SlidestreamError):
    """A pipeline file, cohort table or command-line value is invalid."""


class UnknownPlugin(ConfigError):
    pass


class SlideError(SlidestreamError):
    """A slide cannot be read or used (missing, corrupt, no resolution, ...)."""

    exit_code = 1


class StoreError(SlidestreamError):
    """The patch store cannot be opened or written."""


class BrokenFile(ValueError):
    """Raised by a reader when the file itself is broken (truncated, header claims that do not add up,
    corrupt compressed data): no other reader is tried, and the message is the cause, in plain words."""
