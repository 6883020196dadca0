# Benchmarks are run by hand (python tests/perf/bench.py), never collected as tests.
collect_ignore_glob = ["*.py"]
