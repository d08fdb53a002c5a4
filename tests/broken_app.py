"""A task module that fails at import, for the CLI test."""

RATIO = 1 / 0
