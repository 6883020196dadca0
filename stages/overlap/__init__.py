"""Overlap checks: pairs of thinned scans measured (pairs.py), the corrections adjusted over every pair
(adjust.py), the corrections file (corrections.py), the picture (plot.py) and `sink.overlap` (sink.py)."""
from .sink import OverlapSink

__all__ = ["OverlapSink"]
