"""The one chunk type every stage sees: some points of one item, columnar, decoded on demand. No I/O.

x, y, z are the rows of one (3, n) float64 array in real-world units; every other attribute is a column of its
own under its LAS dimension name (`intensity`, `classification`, `red`, ...). A reader may hand over its own
records instead of columns: `records` (a numpy array, one record a point, as the file stores them) and `layout`,
the reader's object that decodes a column from them (`layout.decode(records, name, type)`). A column is decoded
the first time a stage or a sink asks for it. `changed` names the attributes that no longer equal what the
records hold, so that a sink of the reader's format writes the records' bytes for every other attribute.

A chunk is never changed in place: `moved`, `with_columns`, `take` and `cut` return new chunks that share what
did not change.
"""
from .model import XYZ


class Chunk:
    __slots__ = ("xyz", "dtype", "columns", "records", "layout", "changed")

    def __init__(self, xyz, dtype, columns=None, records=None, layout=None, changed=frozenset()):
        self.xyz = xyz  # (3, n) float64
        self.dtype = dtype  # x, y, z as f8, then every attribute with its type: what the stream info declares
        self.columns = dict(columns or {})  # name -> 1-d (or (n, k)) array: decoded or set by a stage
        self.records = records
        self.layout = layout
        self.changed = frozenset(changed)

    @staticmethod
    def of(array) -> "Chunk":
        """The chunk of a numpy structured array whose first fields are x, y, z (copied)."""
        import numpy as np
        xyz = np.empty((3, len(array)))
        for row, axis in zip(xyz, XYZ):
            row[...] = array[axis]
        columns = {name: np.array(array[name]) for name in array.dtype.names if name not in XYZ}
        return Chunk(xyz, array.dtype, columns)

    @staticmethod
    def empty(dtype) -> "Chunk":
        import numpy as np
        return Chunk(np.empty((3, 0)), dtype, {name: np.empty(0, dtype[name]) for name in dtype.names[3:]})

    def __len__(self):
        return self.xyz.shape[1]

    @property
    def names(self):
        return self.dtype.names

    def __getitem__(self, name):
        if name in XYZ:
            return self.xyz[XYZ.index(name)]
        column = self.columns.get(name)
        if column is None:
            if name not in self.dtype.names:
                raise KeyError(name)
            if self.layout is None:
                raise KeyError(f"{name}: declared but neither a column nor in records")
            # a cache, not a change: the value is what the records hold
            column = self.columns[name] = self.layout.decode(self.records, name, self.dtype[name])
        return column

    def from_records(self, name) -> bool:
        """True when attribute `name` is still exactly what the reader's records hold."""
        return self.records is not None and name not in self.changed and name not in XYZ

    def moved(self, xyz) -> "Chunk":
        """The same points with new coordinates."""
        return Chunk(xyz, self.dtype, self.columns, self.records, self.layout, self.changed)

    def with_columns(self, columns: dict) -> "Chunk":
        """The same points with attributes set or added (their types as given: new ones go last)."""
        import numpy as np
        fields = [(name, self.dtype.fields[name][0]) for name in self.dtype.names]
        types = dict(fields)
        for name, values in columns.items():
            values = np.asarray(values)
            types[name] = np.dtype((values.dtype, values.shape[1:])) if values.ndim > 1 else values.dtype
        order = list(self.dtype.names) + [name for name in columns if name not in self.dtype.names]
        dtype = np.dtype([(name, types[name]) for name in order])
        return Chunk(self.xyz, dtype, {**self.columns, **columns}, self.records, self.layout,
                     self.changed | set(columns))

    def take(self, selection) -> "Chunk":
        """The points a boolean mask, an index array or a slice selects, in that order: one pass over each
        array. Records are taken as whole records of bytes (numpy takes a structured array field by field, 15
        times slower for LAS records) and x, y, z with one call for the three rows."""
        import numpy as np
        if isinstance(selection, slice):
            return self.cut(selection.start, selection.stop, selection.step)
        selection = np.asarray(selection)
        pick = ((lambda values, axis=0: np.compress(selection, values, axis=axis)) if selection.dtype == bool
                else (lambda values, axis=0: np.take(values, selection, axis=axis)))
        records = self.records
        if records is not None:
            records = pick(records.view(np.dtype((np.void, records.dtype.itemsize)))).view(records.dtype)
        return Chunk(pick(self.xyz, 1), self.dtype, {k: pick(v) for k, v in self.columns.items()}, records,
                     self.layout, self.changed)

    def cut(self, start, stop, step=None) -> "Chunk":
        """Points start..stop (every step-th), as views."""
        part = slice(start, stop, step)
        records = self.records[part] if self.records is not None else None
        return Chunk(self.xyz[:, part], self.dtype, {k: v[part] for k, v in self.columns.items()},
                     records, self.layout, self.changed)

    def pieces(self, size):
        """This chunk cut into chunks of at most `size` points."""
        if len(self) <= size:
            yield self
            return
        for start in range(0, len(self), size):
            yield self.cut(start, start + size)

    def decoded(self) -> "Chunk":
        """The same points with every attribute a column of its own and no records."""
        import numpy as np
        columns = {name: np.array(self[name]) for name in self.dtype.names[3:]}
        return Chunk(self.xyz, self.dtype, columns)

    def structured(self):
        """The points as one numpy structured array of `dtype` (a copy): for tests and formats that want it."""
        import numpy as np
        out = np.empty(len(self), self.dtype)
        for name in self.dtype.names:
            out[name] = self[name]
        return out

    def conformed(self, dtype) -> "Chunk":
        """The same points with the attributes of `dtype`: missing ones zero, others converted (merging items)."""
        import numpy as np
        if dtype == self.dtype:
            return self
        columns = {}
        for name in dtype.names[3:]:
            wanted = dtype.fields[name][0]
            if name not in self.dtype.names:
                columns[name] = np.zeros(len(self), wanted)
            elif self.dtype.fields[name][0] != wanted:
                columns[name] = self[name].astype(wanted.base)
        chunk = Chunk(self.xyz, dtype, {**self.columns, **columns}, self.records, self.layout,
                      self.changed | set(columns))
        return chunk

    @staticmethod
    def joined(chunks, dtype) -> "Chunk":
        """One chunk of every point of `chunks` (all of `dtype`), in order. Records are kept when every chunk
        has records of one layout; columns are joined for the rest."""
        import numpy as np
        chunks = list(chunks)
        if not chunks:
            return Chunk.empty(dtype)
        if len(chunks) == 1:
            return chunks[0]
        xyz = np.concatenate([c.xyz for c in chunks], axis=1)
        first = chunks[0]
        same_records = all(c.records is not None and c.layout == first.layout
                           and c.records.dtype == first.records.dtype for c in chunks)
        records = np.concatenate([c.records for c in chunks]) if same_records else None
        changed = frozenset().union(*(c.changed for c in chunks))
        names = [n for n in dtype.names[3:] if n in changed] if same_records else dtype.names[3:]
        columns = {n: np.concatenate([c[n] for c in chunks]) for n in names}
        return Chunk(xyz, dtype, columns, records, first.layout if same_records else None,
                     changed if same_records else frozenset())

