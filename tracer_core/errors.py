"""Errors raised by tracer. Every error a user can cause is a `TracerError` with a message naming the problem."""


class TracerError(Exception):
    """Base class of every error tracer raises on purpose."""


class InvalidTraceError(TracerError, ValueError):
    """A trace (input text, label or field) is not acceptable."""


class StoreError(TracerError):
    """The trace store cannot be opened or written."""


class CorruptStoreError(StoreError):
    """The store path exists but is not a usable SQLite database."""


class ImportFormatError(TracerError, ValueError):
    """A JSONL import file has bad lines."""


class PolicyError(TracerError):
    """A stored policy cannot be loaded or does not fit the current task."""


class EmbedderError(TracerError):
    """The embedding model cannot be loaded or returned bad output."""


class NoTracesError(TracerError):
    """A fit was asked for a task version that has no teacher traces."""
