"""Writing LAS and LAZ: the header chosen from the input's (version, point format, scale, offsets, VLRs),
records copied from the chunk's own LAS records or filled from its columns, LAZ compressed in batches in a
thread of its own."""
import datetime
import io
import logging
import math
import os
import struct
import threading
from concurrent.futures import Future
from contextlib import contextmanager

from pipeline.background import signals_deferred
from pipeline.errors import SinkError
from pipeline.model import XYZ, copy_records
from pipeline.stage import Writer

from ..crs import parsed
from .crs import crs_name, crs_records, is_crs_record, records_for
from .extra_bytes import ExtraBytesRanges
from .header import copc_index, evlrs_of, header_of, laspy_module
from .records import packed_fields, stored_xyz, unpacked

log = logging.getLogger(__name__)

LAZ_BATCH = 1 << 20  # points handed to lazrs at once: enough chunks for its parallel compression
CREATION_FIELD = 90  # the header's creation day of year and year, two unsigned shorts
LEGACY_COUNTS = 107  # the legacy point count and the five legacy counts by return, unsigned ints
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
DEFAULT_SCALE = 0.001
COLOURS = ("red", "green", "blue")


def fit_values(values, target, name, where):
    """`values` converted to a LAS dimension's type, refusing to change any value."""
    import numpy as np
    target = np.dtype(target)
    if values.dtype == target or np.can_cast(values.dtype, target, "safe"):
        return values
    if len(values) == 0:
        return values.astype(target)
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = values.min(), values.max()
        integral = values.dtype.kind in "iub" or bool(np.all(np.floor(values) == values))
        if integral and info.min <= low and high <= info.max:
            return values.astype(target)
        raise SinkError(f"{where}: field {name!r} ({values.dtype}) has values {low}..{high} that do not fit "
                        f"the LAS dimension {name} ({target})")
    return values.astype(target)


def choose_offset(low, scale):
    """An offset near the data: whole units below the minimum (a multiple of the scale)."""
    unit = 1.0 if scale <= 1 else scale
    return math.floor(low / unit) * unit


# a point format that also holds colour (red, green, blue), GPS time or near infrared
WITH_RGB = {0: 2, 1: 3, 4: 5, 6: 7, 9: 10}
WITH_GPS = {0: 1, 2: 3}
WITH_NIR = {6: 8, 7: 8, 9: 10}


def point_format_for(current, names):
    """`current` kept when it holds every attribute present, else the smallest format that does."""
    if current is None:
        current = 0
    if all(c in names for c in COLOURS) and current in WITH_RGB:
        current = WITH_RGB[current]
    if "gps_time" in names and current in WITH_GPS:
        current = WITH_GPS[current]
    if "nir" in names and current in WITH_NIR:
        current = WITH_NIR[current]
    return current


class RememberingFile(io.FileIO):
    """A file that remembers the OS error of a failed write (a full disk), which lazrs, writing through
    it, reports only as "Failed to call write"."""

    error = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as error:
            self.error = error
            raise


def compress_into(point_writer, points, done):
    """Compresses points into a LAZ writer, in a thread of its own; `done` (a Future) gets the outcome."""
    try:
        point_writer.write_points(points)
        done.set_result(None)
    except BaseException as error:  # handed to the writer's thread
        done.set_exception(error)


def creation_date(info):
    """The (year, day of year) a LAS output's header gives as its creation: the input's own, as it stores it
    (0 when unset), else the day of SOURCE_DATE_EPOCH (the reproducible-builds convention), else unset (0, 0),
    so that the same inputs give the same bytes on any day."""
    if "created" in info.format_facts:
        return tuple(info.format_facts["created"])
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return 0, 0
    try:
        day = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).timetuple()
    except (ValueError, OverflowError, OSError):
        raise SinkError(f"SOURCE_DATE_EPOCH={epoch!r}: expected seconds since 1970-01-01 (an integer)") from None
    return day.tm_year, day.tm_yday


class LasWriter(Writer):
    def __init__(self, sink, item, info, temp, compress):
        self.sink, self.item, self.info, self.temp, self.compress = sink, item, info, temp, compress
        self.where = f"{sink.label}: {item.name}"
        self.laspy = laspy_module()
        self.header = self.make_header(info)
        self.declare_crs(info)
        self.evlrs = self.kept_evlrs(info)
        self.extra_ranges = ExtraBytesRanges(self.header, self.header.point_format.dtype(),
                                             info.format_facts.get("las"))
        self.writer = None
        self.batch, self.batched = None, 0  # LAZ records waiting for a bigger write (see store)
        self.spare, self.compressing = None, None  # the other batch buffer; the batch lazrs is compressing
        self.offsets_fixed = self.header_offsets_known(info)
        self.created = creation_date(info)
        self.file = None

    def make_header(self, info):
        import numpy as np
        laspy = self.laspy
        facts = info.format_facts.get("las")
        names = set(info.dtype.names)
        wanted = self.sink.options["version"]
        if facts:
            if copc_index(facts):
                log.info("%s: the input's COPC index (its copc VLR and EVLRs) describes an octree this file does "
                         "not have: not written", self.where)
            header = header_of(facts)
            if facts.get("scales") is not None:  # several items merged: the finest scale of any of them
                header.scales = np.array(facts["scales"])
            header.vlrs = [v for v in header.vlrs if type(v).__name__ != "LasZipVlr"]
            current = str(header.version)
            version = wanted or ("1.2" if current == "1.0" else current)  # laspy writes 1.1 and later
            if version != current:
                log.info("%s: LAS %s input written as LAS %s", self.where, current, version)
            point_format = point_format_for(header.point_format.id, names)
            extra = [laspy.ExtraBytesParams(name=d.name, type=d.type_str(), scales=d.scales, offsets=d.offsets,
                                            description=d.description)
                     for d in header.point_format.extra_dimensions]
        else:
            version = wanted or "1.4"
            point_format = point_format_for(None, names)
            header = laspy.LasHeader(version=version, point_format=point_format)
            header.scales = np.array([DEFAULT_SCALE] * 3)
            extra = []
        if point_format >= 6 and version != "1.4":
            raise SinkError(f"{self.where}: point format {point_format} needs LAS 1.4; set `version: 1.4`")
        if (str(header.version), header.point_format.id) != (version, point_format):
            new_format = laspy.PointFormat(point_format)
            for params in extra:
                new_format.add_extra_dimension(params)
            header.set_version_and_point_format(laspy.header.Version.from_str(version), new_format)
        if self.sink.options["scale"] is not None:
            header.scales = np.array(self.sink.options["scale"])
        header.partial_reset()
        # bytes of no stated meaning before or after the VLRs (LAS 1.0's point data start signature, padding):
        # the specification's header size and offset to the point data hold without them
        header.extra_header_bytes, header.extra_vlr_bytes = b"", b""
        known = set(header.point_format.dimension_names) | set(XYZ)
        added = [name for name in info.dtype.names if name not in known]
        if added:
            header.add_extra_dims([laspy.ExtraBytesParams(name=name, type=self.extra_type(info.dtype[name]))
                                   for name in added])
        if header.point_format.id >= 6:  # LAS 1.4 calls formats 6-10 without the WKT bit an error: their CRS is WKT
            header.global_encoding.wkt = True
        return header

    def declare_crs(self, info):
        """The coordinate system the header declares, as the `crs` option says (see crs.py)."""
        option, facts = self.sink.options["crs"], info.format_facts.get("las")
        self.crs = option if option not in ("keep", "none") else None  # what the report says
        if option == "keep":
            kept = crs_records(facts) if facts else ()
            self.crs = crs_name(kept) if kept else None
            if kept and info.moved:
                log.info("%s: the coordinates were moved; the input's coordinate system (%s) is declared as it was: "
                         "set `crs` to the one they are in now", self.where, crs_name(kept))
            return
        self.header.vlrs = self.laspy.vlrs.vlrlist.VLRList([v for v in self.header.vlrs if not is_crs_record(v)])
        if option == "none":
            return
        records, wkt = records_for(parsed(option), self.header.point_format.id, self.where)
        self.header.vlrs.extend(self.laspy.VLR(*record) for record in records)
        self.header.global_encoding.wkt = wkt  # set for WKT, clear for GeoTIFF keys

    def kept_evlrs(self, info):
        facts = info.format_facts.get("las")
        evlrs = evlrs_of(facts) if facts else []
        if self.sink.options["crs"] != "keep":
            evlrs = [v for v in evlrs if not is_crs_record(v)]
        if evlrs and self.header.version.minor < 4:
            log.warning("%s: %d EVLR(s) dropped: LAS %s has no EVLRs", self.where, len(evlrs), self.header.version)
            return []
        return evlrs

    def extra_type(self, dtype):
        import numpy as np
        if dtype.subdtype:
            base, shape = dtype.subdtype
            return f"{int(np.prod(shape))}{base.str.lstrip('<>|=')}"
        if dtype.kind not in "iuf":
            raise SinkError(f"{self.where}: a field of type {dtype} cannot be stored in LAS")
        return dtype

    def header_offsets_known(self, info):
        import numpy as np
        facts = info.format_facts.get("las")
        if isinstance(self.sink.options["offset"], list):
            self.header.offsets = np.array(self.sink.options["offset"])
            return True
        if facts and not info.moved and not facts.get("merged"):
            return True  # same coordinates, same integers: keep the input's offsets
        if info.bounds is not None:
            self.header.offsets = np.array([choose_offset(lo, s) for lo, s in zip(info.bounds.mins, self.header.scales)])
            return True
        return False

    def fix_offsets(self, first_chunk=None):
        """Chooses the offsets from the first chunk, when the stream's bounds did not fix them."""
        import numpy as np
        if self.offsets_fixed:
            return
        if first_chunk is not None and len(first_chunk):
            self.header.offsets = np.array([choose_offset(float(first_chunk[a].min()), s)
                                            for a, s in zip(XYZ, self.header.scales)])
        else:
            self.header.offsets = np.zeros(3)
        self.offsets_fixed = True

    def open_writer(self):
        self.fix_offsets()
        backend = self.laspy.LazBackend.detect_available() if self.compress else None
        self.file = io.BufferedWriter(RememberingFile(self.temp, "w"), 1 << 20)
        try:
            self.writer = self.laspy.open(self.file, mode="w", header=self.header, do_compress=self.compress,
                                          laz_backend=backend, closefd=True)
        except OSError:
            raise
        except Exception as error:
            raise SinkError(f"{self.where}: cannot write {self.sink.targets(self.item)[0]}: {error}") from error

    def quantised(self, chunk):
        """The integers that store the chunk's x, y, z with the header's scales and offsets, as a (3, n) float
        array of whole numbers, and the lowest and highest of each axis; refuses values that do not fit
        int32."""
        import numpy as np
        if not len(chunk):
            return np.empty((3, 0)), []
        self.fix_offsets(chunk)
        scales, offsets = self.header.scales, self.header.offsets
        with np.errstate(over="ignore", invalid="ignore"):  # what does not fit is refused below, in one line
            values = np.subtract(chunk.xyz, offsets[:, None])
            values /= scales[:, None]
            np.rint(values, out=values)
        lows, highs = values.min(axis=1), values.max(axis=1)
        for index, axis in enumerate(XYZ):
            if not (INT32_MIN <= lows[index] and highs[index] <= INT32_MAX):  # also false for NaN
                values = chunk[axis]
                raise SinkError(f"{self.where}: {axis} values {values.min()}..{values.max()} do not fit LAS 32-bit "
                                f"integers with scale {scales[index]:g} and offset {offsets[index]:g}")
        return values, list(zip(lows.astype(np.int64).tolist(), highs.astype(np.int64).tolist()))

    def append(self, records, values, ranges):
        """Stores quantised coordinates (see `quantised`) in the X, Y, Z of `records` and writes them,
        keeping the header's bounds and counts up to date (what laspy's write_points does, without its
        sort per chunk)."""
        import numpy as np
        for stored, row in zip(stored_xyz(records), values):  # row by row: faster than one strided copy
            stored[...] = row
        returns = unpacked(records, packed_fields(self.header.point_format.id)["return_number"])
        counts = np.bincount(returns, minlength=16)
        if self.writer is None:
            self.open_writer()
        header = self.writer.header
        if header.max_point_count() - header.point_count < len(records):
            raise SinkError(f"{self.where}: more points than a LAS {header.version} file can hold")
        for index, (axis, (low, high)) in enumerate(zip(XYZ, ranges)):
            scale, offset = header.scales[index], header.offsets[index]
            setattr(header, f"{axis}_min", min(getattr(header, f"{axis}_min"), low * scale + offset))
            setattr(header, f"{axis}_max", max(getattr(header, f"{axis}_max"), high * scale + offset))
        by_return = header.number_of_points_by_return
        by_return[:] += counts[1:len(by_return) + 1].astype(by_return.dtype)
        header.point_count += len(records)
        self.store(records)

    def store(self, records):
        """Hands records to laspy; for LAZ, in batches of LAZ_BATCH points, so that lazrs compresses many
        chunks in parallel per call (a chunk holds 65,536 points by default)."""
        import numpy as np
        if not self.compress:
            self.writer.point_writer.write_points(self.laspy.PackedPointRecord(records, self.header.point_format))
            return
        if self.batch is None:
            self.batch = np.empty(LAZ_BATCH, records.dtype)
        start = 0
        while start < len(records):
            take = min(len(records) - start, LAZ_BATCH - self.batched)
            copy_records(records[start:start + take], self.batch[self.batched:self.batched + take])
            self.batched += take
            start += take
            if self.batched == LAZ_BATCH:
                self.flush()

    def flush(self):
        """Starts compressing the batch in a background thread (lazrs releases the GIL), so the next
        batch fills meanwhile; one batch is compressed at a time, in order."""
        import numpy as np
        if not self.batched:
            return
        self.finish_compressing()
        points = self.laspy.PackedPointRecord(self.batch[:self.batched], self.header.point_format)
        done = Future()
        thread = threading.Thread(target=compress_into, args=(self.writer.point_writer, points, done),
                                  name="laz-compress", daemon=True)
        with signals_deferred():  # once started, the thread must be known to abort(), which waits for it
            thread.start()
            self.compressing = (done, self.batch)
        self.batch = self.spare if self.spare is not None else np.empty_like(self.batch)
        self.spare, self.batched = None, 0

    def finish_compressing(self):
        """Waits for the batch being compressed; raises its error, if any. A wait broken off (Ctrl-C) leaves
        the batch `compressing`, so that abort() waits for it again: no thread may be left inside lazrs when
        the process exits, which then aborts ("FATAL: exception not rethrown")."""
        if self.compressing is not None:
            done, batch = self.compressing
            try:
                with self.os_errors():
                    done.result()
            finally:
                if done.done():
                    self.compressing, self.spare = None, batch

    @contextmanager
    def os_errors(self):
        """lazrs reports the OS error of a write it makes through `self.file` (a full disk) only as "Failed to
        call write": raise the OS error itself, which the runner reports naming the file."""
        try:
            yield
        except Exception:
            if self.file is not None and self.file.raw.error is not None:
                raise self.file.raw.error from None
            raise

    def prepare(self, chunk):
        """The chunk's records, their quantised coordinates and the ranges of their extra dimensions; needs no
        file (see Writer)."""
        records = self.records_of(chunk)
        return (records, *self.quantised(chunk), self.extra_ranges.of(records))

    def records_of(self, chunk):
        """The chunk's points as records of the output's point format: a copy of its own LAS records when
        they are of that format (only the attributes a stage changed are set again), else filled column by
        column. X, Y and Z are set by `append`."""
        import numpy as np
        dtype = self.header.point_format.dtype()
        if getattr(chunk.layout, "kind", None) == "las" and chunk.records.dtype == dtype:
            records, names = copy_records(chunk.records), [n for n in chunk.names[3:] if n in chunk.changed]
        else:
            records, names = np.zeros(len(chunk), dtype), chunk.names[3:]
        if not names:
            return records
        record = self.laspy.ScaleAwarePointRecord(records, self.header.point_format, self.header.scales,
                                                  self.header.offsets)  # scaled extra dims take real values
        formats = {d.name: d for d in self.header.point_format.dimensions}
        for name in names:
            dimension = formats[name]
            values = chunk[name]
            if dimension.is_standard and dimension.kind.name != "BitField":
                values = fit_values(values, dimension.dtype, name, self.where)
            elif dimension.kind.name == "BitField":
                values = fit_values(values, np.uint8, name, self.where)
                if len(values) and values.max() >= 1 << dimension.num_bits:
                    raise SinkError(f"{self.where}: field {name!r} has value {values.max()} that does not fit "
                                    f"its {dimension.num_bits} bits")
            record[name] = values
        return records

    def write(self, prepared):
        records, values, ranges, extra_ranges = prepared
        if len(records):
            self.append(records, values, ranges)
            self.extra_ranges.add(extra_ranges)

    def close(self):
        if self.writer is None:
            self.open_writer()
        self.flush()
        self.finish_compressing()
        with self.os_errors():
            if self.evlrs:
                self.writer.write_evlrs(self.laspy.vlrs.vlrlist.VLRList(self.evlrs))
            self.writer.close()
        with open(self.temp, "r+b") as handle:  # laspy writes today's date, and cannot write an unset one
            handle.seek(CREATION_FIELD)
            handle.write(struct.pack("<HH", self.created[1], self.created[0]))
            header = self.writer.header
            if header.version.minor >= 4 and header.point_format.id <= 5 and header.point_count < 2 ** 32:
                # LAS 1.4 keeps the legacy counts for readers of older versions, whenever formats 0-5 fit them;
                # laspy leaves them 0, which such readers take for an empty file
                handle.seek(LEGACY_COUNTS)
                handle.write(struct.pack("<6I", header.point_count,
                                         *[int(n) for n in header.number_of_points_by_return[:5]]))
            self.extra_ranges.write_into(handle)

    def described(self):
        return {str(self.temp): {"crs": self.crs}}

    def abort(self):
        if self.writer is not None:
            try:
                self.finish_compressing()
                self.writer.close()
            except Exception:  # the file is deleted anyway
                pass
