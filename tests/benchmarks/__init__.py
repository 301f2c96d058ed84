"""`make bench`: the broker measured against its baselines, side by side, in one run.

Not collected by pytest (no module here starts with `test_`). Run with
`python -m tests.benchmarks`; see `run.py` for the sections and `--help` for the knobs.
"""
