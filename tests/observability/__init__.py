"""Tests of app/observability: metrics, request logs, secrets kept out of every output."""
