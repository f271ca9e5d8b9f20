"""Pieces of `examples/demo.py`: the teacher set-up, the per-window table and the cost arithmetic."""
