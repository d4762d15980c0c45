"""Client side of the benchmark suite: datasets, HTTP backends, metrics.

`python -m sglserve.bench_serving` is the entry point; these modules are its parts so
tests and other benches (bench_offline_throughput) can reuse the dataset samplers and
the metric math without an HTTP server.
"""
