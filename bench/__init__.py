"""Benchmarks (scripts, not tests): bench/load, bench_queue.py, bench_order_index.py."""
