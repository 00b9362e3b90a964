"""A worker (edge node): local training loop, persisted state, and the /detect service."""
