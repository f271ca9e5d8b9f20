"""Serving: `Tracer` (record, route, audit, monitor, suspend, refit), the registry the integrations share, task versions and the guarantee's wording."""
