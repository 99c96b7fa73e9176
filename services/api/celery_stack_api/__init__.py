"""The HTTP API: counters ingest and reads, content, health and metrics."""
