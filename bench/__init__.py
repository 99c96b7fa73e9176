"""Benchmarks: our design against the field reports' naive designs, side by side (not tests).

`python -m bench [name ...]` (`make bench`) runs every `bench/bench_<name>.py` or the named ones.
"""
