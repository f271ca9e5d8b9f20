"""Storage: the trace store (SQLite or PostgreSQL), its schema steps, background writer, spill file, JSONL and copies; nothing here learns or serves."""
