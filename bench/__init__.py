"""chimneyd benchmarks: every figure a ratio against a baseline measured in the same run.

Run `make bench` (or `.venv/bin/python -m bench`); `python -m bench --help` lists the options.
This package's `__init__` and `__main__` import only the standard library, so `python -m bench`
outside the project's environment can say what to run instead.
"""

# the sections, in the order they run (bench/sections.py holds what each one runs)
SECTION_NAMES = ("hops", "bulk", "mux", "rpc", "echo", "observe", "memory", "shards")
