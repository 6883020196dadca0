"""The one chunk type: columns decoded on demand from a reader's records, and new chunks for every change."""
import numpy as np

from pipeline.chunk import Chunk

RECORDS = np.array([(10, 7, 1), (20, 8, 2), (30, 9, 3)], dtype=[("X", "<i4"), ("i", "<u2"), ("c", "u1")])
DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2"), ("classification", "u1")])


class CountingLayout:
    """Decodes `intensity` from field i and `classification` from c, counting the decodes."""

    kind = "test"

    def __init__(self):
        self.decoded = []

    def decode(self, records, name, wanted):
        self.decoded.append(name)
        return records[{"intensity": "i", "classification": "c"}[name]].astype(wanted)


def chunk_of_records():
    layout = CountingLayout()
    xyz = np.stack([RECORDS["X"] * 0.5, np.zeros(3), np.ones(3)])
    return Chunk(xyz, DTYPE, records=RECORDS, layout=layout), layout


def test_a_column_is_decoded_once_and_only_when_asked_for():
    chunk, layout = chunk_of_records()
    assert layout.decoded == []
    assert chunk["intensity"].tolist() == [7, 8, 9] and chunk["intensity"].tolist() == [7, 8, 9]
    assert layout.decoded == ["intensity"]
    assert chunk["x"].tolist() == [5.0, 10.0, 15.0]
    assert chunk.from_records("classification") and not chunk.from_records("x")


def test_changes_give_new_chunks_and_say_what_no_longer_matches_the_records():
    chunk, _ = chunk_of_records()
    changed = chunk.with_columns({"intensity": np.array([1, 2, 3], np.uint16), "normal": np.zeros(3, np.float32)})
    assert changed.changed == {"intensity", "normal"} and chunk.changed == frozenset()
    assert changed.dtype.names == (*DTYPE.names, "normal") and changed.dtype["normal"] == np.float32
    assert changed["intensity"].tolist() == [1, 2, 3] and chunk["intensity"].tolist() == [7, 8, 9]
    assert not changed.from_records("intensity") and changed.from_records("classification")
    moved = chunk.moved(chunk.xyz + 1)
    assert moved["x"].tolist() == [6.0, 11.0, 16.0] and chunk["x"].tolist() == [5.0, 10.0, 15.0]
    assert moved.records is chunk.records


def test_take_and_cut_select_points_with_their_records():
    chunk, _ = chunk_of_records()
    taken = chunk.take(np.array([True, False, True]))
    assert len(taken) == 2 and taken["x"].tolist() == [5.0, 15.0] and taken.records.tolist() == [(10, 7, 1), (30, 9, 3)]
    assert taken["classification"].tolist() == [1, 3]
    assert [len(piece) for piece in chunk.pieces(2)] == [2, 1]
    assert chunk.cut(1, 3)["intensity"].tolist() == [8, 9]


def test_structured_round_trip_and_joined_chunks():
    chunk, _ = chunk_of_records()
    array = chunk.structured()
    assert array.tolist() == [(5.0, 0.0, 1.0, 7, 1), (10.0, 0.0, 1.0, 8, 2), (15.0, 0.0, 1.0, 9, 3)]
    assert Chunk.of(array).structured().tolist() == array.tolist()
    joined = Chunk.joined([chunk.cut(0, 1), chunk.cut(1, 3)], DTYPE)
    assert joined.records.tolist() == RECORDS.tolist() and joined.structured().tolist() == array.tolist()
    mixed = Chunk.joined([chunk.cut(0, 1), Chunk.of(array[1:])], DTYPE)
    assert mixed.records is None and mixed.structured().tolist() == array.tolist()


def test_conformed_adds_missing_attributes_as_zero_and_converts_others():
    chunk, _ = chunk_of_records()
    wider = np.dtype([*[(n, DTYPE[n]) for n in DTYPE.names[:3]], ("intensity", "f8"), ("classification", "u1"),
                      ("gps_time", "f8")])
    conformed = chunk.conformed(wider)
    assert conformed.dtype == wider and conformed["gps_time"].tolist() == [0.0, 0.0, 0.0]
    assert conformed["intensity"].dtype == np.float64 and conformed.changed == {"intensity", "gps_time"}
    assert chunk.conformed(DTYPE) is chunk
