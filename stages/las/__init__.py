"""LAS and LAZ: the header checked before laspy sees it (header.py), records as chunks (records.py), the
streaming reader (reader.py), the writer with its LAZ batching (writer.py) and `sink.las` (sink.py)."""
from .header import check_header
from .reader import read_las
from .records import LasLayout, all_points, described
from .sink import LasSink
from .writer import choose_offset, fit_values

__all__ = ["LasSink", "LasLayout", "all_points", "check_header", "choose_offset", "described", "fit_values",
           "read_las"]
