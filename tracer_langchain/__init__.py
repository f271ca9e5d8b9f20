"""LangChain integration for tracer."""
