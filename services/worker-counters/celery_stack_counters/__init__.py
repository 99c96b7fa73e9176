"""worker-counters: moves buffered counts into PostgreSQL exactly once, and recounts actions."""
