"""janitor: the maintenance queue's tasks (outbox relay) and, later, the sweeps."""
