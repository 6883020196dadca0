"""The Extra Bytes VLR that sink.las writes: min and max of each extra dimension equal numpy's over the raw values
written (no_data and NaN left out), with the option bits that say so, whatever the chunk size; no claim where there
is nothing to measure. The VLR is read back from the file's bytes, as the LAS 1.4 specification lays it out."""
import struct

import laspy
import numpy as np
import pytest

from tests.conftest import run
from tests.las_validator import problems
from tests.stages.test_normals import surfaces

MIN_BIT, MAX_BIT, NO_DATA_BIT = 2, 4, 1


def extra_bytes_descriptors(path):
    """{name: (data_type, options, no_data, min, max)} from the Extra Bytes VLR (LASF_Spec 4) in the file's bytes,
    min and max as the 8-byte values the specification upcasts them to (3 of each, the last two for arrays)."""
    data = open(path, "rb").read()
    header_size, _, count = struct.unpack_from("<HII", data, 94)
    position, found = header_size, {}
    for _ in range(count):
        user_id = data[position + 2:position + 18].rstrip(b"\0")
        record_id, length = struct.unpack_from("<HH", data, position + 18)
        if (user_id, record_id) == (b"LASF_Spec", 4):
            for start in range(position + 54, position + 54 + length, 192):
                descriptor = data[start:start + 192]
                data_type, options = descriptor[2], descriptor[3]
                name = descriptor[4:36].rstrip(b"\0").decode()
                kind = "d" if data_type in (9, 10, 19, 20, 29, 30) else "q" if data_type % 2 == 0 else "Q"
                no_data, low, high = (struct.unpack_from(f"<{kind}", descriptor, at)[0] for at in (40, 64, 88))
                lows = [struct.unpack_from(f"<{kind}", descriptor, 64 + 8 * i)[0] for i in range(3)]
                highs = [struct.unpack_from(f"<{kind}", descriptor, 88 + 8 * i)[0] for i in range(3)]
                found[name] = (data_type, options, no_data, lows, highs)
        position += 54 + length
    return found


def raw_ranges(path, name, no_data=None):
    """numpy's min and max of each element of an extra dimension's raw values in the file, no_data and NaN out."""
    values = laspy.read(path).points.array[name]
    values = values.reshape(len(values), -1)
    lows, highs = [], []
    for column in values.T:
        keep = ~np.isnan(column) if column.dtype.kind == "f" else np.ones(len(column), bool)
        if no_data is not None:
            keep &= column != no_data
        lows.append(column[keep].min().item())
        highs.append(column[keep].max().item())
    return lows, highs


@pytest.mark.parametrize("chunk_size", [65536, 700])
@pytest.mark.parametrize("suffix", ["las", "laz"])
def test_normals_written_as_extra_bytes_state_their_true_range(tmp_path, registry, chunk_size, suffix):
    from tests.conftest import make_las
    rng = np.random.default_rng(5)
    make_las(tmp_path / "in.las", surfaces(3000, rng), scale=1e-4, point_format=1, gps_time=rng.uniform(0, 10, 3000))
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
            chunk_size: {chunk_size}
          - type: transform.normals
            knn: 8
          - type: sink.las
            path: out/in.{suffix}
    """)
    written = tmp_path / f"out/in.{suffix}"
    described = extra_bytes_descriptors(written)
    assert list(described) == ["normal_x", "normal_y", "normal_z", "curvature"]
    for name, (data_type, options, _, lows, highs) in described.items():
        assert data_type == 9 and options & (MIN_BIT | MAX_BIT) == MIN_BIT | MAX_BIT, name
        assert (lows[:1], highs[:1]) == raw_ranges(written, name), name  # float32 values, upcast exactly
        assert lows[1:] == highs[1:] == [0, 0]  # unused elements are zero
    assert problems(written) == []


def make_extra_bytes_input(path):
    """LAS 1.4 with extra dimensions of every kind: scaled int32 with a no_data value, float32 with NaNs,
    an array of three int16, uint8 and int64; each one's no_data and extremes in points a crop removes."""
    rng = np.random.default_rng(11)
    count = 2000
    header = laspy.LasHeader(version="1.4", point_format=6)
    header.scales, header.offsets = np.array([0.001] * 3), np.array([500000.0, 4000000.0, 0.0])
    header.add_extra_dims([
        laspy.ExtraBytesParams("height", "i4", scales=np.array([0.01]), offsets=np.array([100.0]),
                               no_data=np.array([-99999])),
        laspy.ExtraBytesParams("weight", "f4"),
        laspy.ExtraBytesParams("triple", "3i2"),
        laspy.ExtraBytesParams("flag", "u1", no_data=np.array([255])),
        laspy.ExtraBytesParams("serial", "i8"),
    ])
    data = laspy.LasData(header)
    x = rng.uniform(0, 100, count)
    data.x, data.y, data.z = 500000 + x, 4000000 + rng.uniform(0, 100, count), rng.uniform(0, 10, count)
    height = rng.integers(-5000, 5000, count).astype(np.int32)
    height[::7] = -99999
    height[x > 90] = 2 ** 31 - 1  # the extremes lie where the crop cuts
    data.points.array["height"] = height
    weight = rng.normal(0, 1, count).astype(np.float32)
    weight[::5] = np.nan
    weight[x > 90] = 1e30
    data["weight"] = weight
    data["triple"] = rng.integers(-30000, 30000, (count, 3)).astype(np.int16)
    flag = rng.integers(0, 200, count).astype(np.uint8)
    flag[::3] = 255
    data["flag"] = flag
    data["serial"] = rng.integers(-2 ** 62, 2 ** 62, count)
    data.write(str(path))
    return path


@pytest.mark.parametrize("chunk_size", [65536, 333])
def test_extra_bytes_of_an_input_state_the_range_of_the_points_written(tmp_path, registry, chunk_size):
    make_extra_bytes_input(tmp_path / "in.las")
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
            chunk_size: {chunk_size}
          - type: transform.crop
            bounds: [[500000, 4000000], [500090, 4000100]]
          - type: sink.las
            path: out/in.las
    """)
    written = tmp_path / "out/in.las"
    described = extra_bytes_descriptors(written)
    assert list(described) == ["height", "weight", "triple", "flag", "serial"]
    no_data = {"height": -99999, "flag": 255}
    for name, (data_type, options, stored_no_data, lows, highs) in described.items():
        assert options & (MIN_BIT | MAX_BIT) == MIN_BIT | MAX_BIT, name
        expected = raw_ranges(written, name, no_data.get(name))
        assert (lows[:len(expected[0])], highs[:len(expected[1])]) == expected, name
        assert bool(options & NO_DATA_BIT) == (name in no_data) and (stored_no_data == no_data.get(name, 0)), name
    # no_data and NaN, which the input holds, are left out; the crop took the extremes away
    assert described["height"][3][0] > -99999 and described["height"][4][0] < 2 ** 31 - 1
    assert described["flag"][4][0] < 255 and described["weight"][4][0] < 1e30
    assert np.isfinite(described["weight"][3][0])
    heights = laspy.read(written)["height"]  # scale and offset kept: the real values are those of the input
    original = laspy.read(tmp_path / "in.las")
    inside = np.asarray(original.x) <= 500090
    assert np.array_equal(np.asarray(heights), np.asarray(original["height"])[inside])
    assert problems(written) == []


def test_no_range_is_claimed_without_values(tmp_path, registry):
    """An output without points, and a dimension whose every written value is NaN, state no min or max: the bits
    clear and the fields zero, as the specification asks of unused fields."""
    make_extra_bytes_input(tmp_path / "in.las")
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
          - type: transform.crop
            bounds: [[0, 0], [1, 1]]
          - type: sink.las
            path: out/empty.las
    """)
    for name, (_, options, _, lows, highs) in extra_bytes_descriptors(tmp_path / "out/empty.las").items():
        assert options & (MIN_BIT | MAX_BIT) == 0 and lows == highs == [0, 0, 0], name
    rng = np.random.default_rng(3)
    header = laspy.LasHeader(version="1.4", point_format=6)
    header.add_extra_dims([laspy.ExtraBytesParams("unknown", "f8"), laspy.ExtraBytesParams("known", "f8")])
    data = laspy.LasData(header)
    data.x, data.y, data.z = rng.uniform(0, 10, (3, 50))
    data["unknown"] = np.full(50, np.nan)
    data["known"] = rng.normal(0, 1, 50)
    data.write(str(tmp_path / "nan.las"))
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [nan.las]
          - type: sink.las
            path: out/nan.las
    """)
    described = extra_bytes_descriptors(tmp_path / "out/nan.las")
    assert described["unknown"][1] & (MIN_BIT | MAX_BIT) == 0 and described["unknown"][3:] == ([0, 0, 0], [0, 0, 0])
    assert described["known"][1] & (MIN_BIT | MAX_BIT) == MIN_BIT | MAX_BIT
    assert (described["known"][3][:1], described["known"][4][:1]) == raw_ranges(tmp_path / "out/nan.las", "known")
