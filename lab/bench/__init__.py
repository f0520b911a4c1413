"""Benchmarks run in the namespace lab; each prints its figures and never asserts them.

    python -m lab.bench failover [--runs 3] [--settings v2-1s,v3-100ms] [--json OUT] ...

See docs/benchmarks.md for the method and the figures measured.
"""
