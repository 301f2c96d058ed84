"""Shared state behind small ports: `memory` for one instance, `redis` for a fleet."""
