"""Benchmarks report ratios to a baseline measured in the same run (machines are noisy).

Run: .venv/bin/python -m pytest benchmarks            (full)
     .venv/bin/python -m pytest benchmarks --benchmark-disable   (smoke: runs once, no timing)
"""
