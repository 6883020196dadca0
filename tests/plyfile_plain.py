"""An independent, minimal PLY reader for tests: header words and numpy, nothing shared with stages.ply.

It reads the vertex element only, and expects it to be the first element (true of every file here).
"""
import numpy as np

NUMPY = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
         "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
         "int32": "i4", "uint32": "u4", "float32": "f4", "float64": "f8"}


def read_plain_ply(path):
    data = open(path, "rb").read()
    end = data.index(b"end_header") + len(b"end_header")
    end = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii").splitlines()
    assert lines[0].strip() == "ply"
    fmt = lines[1].split()[1]
    count, fields, element = None, [], None
    for line in lines[2:]:
        words = line.split()
        if words and words[0] == "element":
            element = words[1]
            if element == "vertex":
                count = int(words[2])
        elif words and words[0] == "property" and element == "vertex":
            fields.append((words[-1], NUMPY[words[1]]))
    if fmt == "ascii":
        rows = [r.split() for r in data[end:].decode("ascii").splitlines() if r.strip()][:count]
        out = np.zeros(count, [(n, t) for n, t in fields])
        for column, (name, kind) in enumerate(fields):
            out[name] = [float(r[column]) if kind[0] == "f" else int(r[column]) for r in rows]
        return out
    order = "<" if fmt == "binary_little_endian" else ">"
    out = np.frombuffer(data, dtype=[(n, order + t) for n, t in fields], count=count, offset=end)
    return out
