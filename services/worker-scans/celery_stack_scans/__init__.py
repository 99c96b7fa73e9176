"""worker-scans: runs domain scans from the `scans` queue with an SSRF-safe scanner."""
