"""Errors of the task layer: permanent by nature, so never retried."""

from __future__ import annotations


class InvalidInput(ValueError):
    """A job's argument is of the wrong type, empty, too long or has illegal characters."""


class InvalidPayload(ValueError):
    """An upstream body decoded fine but lacks what the transform needs."""
