"""LiteLLM integration for tracer."""
