"""The fleet-wide upstream budget: permits from an exact sliding window, waits, cooldown."""
