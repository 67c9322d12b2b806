"""Errors users can act on. The CLI prints these as one line and exits with status 2."""

from __future__ import annotations


class UnmaskError(ValueError):
    """Base class: bad input, named precisely (file, field, value) so the user can fix it."""


class ConfigError(UnmaskError):
    """A configuration value is out of range or inconsistent."""


class CheckpointError(UnmaskError):
    """A model directory or one of its files is missing, malformed or inconsistent."""


class TokenizerError(UnmaskError):
    """Tokenizer files are missing or lack a required special token."""
