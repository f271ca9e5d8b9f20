"""Errors of the LangChain integration; all are `TracerError`s naming the problem."""

from tracer_core.errors import TracerError


class IntegrationConfigError(TracerError, ValueError):
    """`with_tracer` (or another entry point) was given an unusable argument."""


class TextExtractionError(TracerError, ValueError):
    """The text to classify could not be taken from a chain input."""


class CodecError(TracerError, ValueError):
    """A chain output cannot be turned into a label, or a label back into an output."""
