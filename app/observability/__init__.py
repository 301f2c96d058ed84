"""Logs, metrics and the other things operators look at."""
