"""Benchmarks for tracer: `python -m bench [--only store,speed,routing,curve,oos,nli,validity]`.

Every benchmark is a function returning rows (dicts); `bench.__main__` prints them as
Markdown tables as it goes and writes `bench/results.md` at the end.
"""
