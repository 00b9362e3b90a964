"""The worker's HTTP routes, one module per resource: detect, status (health, readiness, status), streams."""
