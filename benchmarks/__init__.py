"""Benchmarks: raybeam against raw Ray, bare Ray Serve, Celery and RQ, in one run.

Run `python -m benchmarks` (or `benchmarks/run`); `benchmarks/setup` installs the optional
peers (redis-server, Celery, RQ) and matplotlib for the plots.
"""
