"""Local development and test support. Never imported by a service."""
