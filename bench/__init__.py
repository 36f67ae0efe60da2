"""chimneyd benchmarks: every figure a ratio against a baseline measured in the same run.

Run `python -m bench` (or `make bench`); see bench/__main__.py for the options.
"""
