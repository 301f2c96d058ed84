"""Thin HTTP routers over the services; errors are mapped to HTTP in `errors.py` only."""
