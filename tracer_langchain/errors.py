"""Errors of the LangChain integration; all are `TracerError`s naming the problem."""

from tracer_core.errors import TracerError


class IntegrationConfigError(TracerError, ValueError):
    """`with_tracer` (or another entry point) was given an unusable argument."""


class TextExtractionError(TracerError, ValueError):
    """The text to classify could not be taken from a chain input."""


class AmbiguousTextError(TextExtractionError):
    """No rule picks the text to classify from a chain input: name it with `input_key=` or `text_fn=`.

    Raised by the wrapped chain's call before the chain runs (a configuration error, never
    turned into a silent serialisation of the whole input)."""


class CodecError(TracerError, ValueError):
    """A chain output cannot be turned into a label, or a label back into an output."""
