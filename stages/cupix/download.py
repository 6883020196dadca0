"""Downloading sub files: the storage link is fetched without the token, streamed to a temporary file,
resumed with Range where the storage allows it, checked against Content-Length and renamed into place.
A manifest in the download folder records what is there, so an unchanged sub is not fetched again; it
is checked, not trusted. Runs sharing the folder take turns per sub (a lock file each), and a partial
file that a dead run left is resumed or removed."""
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from pipeline.model import safe_name
from pipeline.staging import file_digest

from .listing import entry_id, meta

from .client import RETRYABLE, CupixError, Retry, Stalled, link_problem

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BLOCK = 1 << 20
MAX_REDIRECTS = 10  # storage redirects followed for one request


def filename_from_disposition(value):
    """The file name of a Content-Disposition header (RFC 6266 `filename*=` first, then `filename=`).

    >>> filename_from_disposition("attachment; filename*=UTF-8''scan%2001.laz; filename=\\"x.laz\\"")
    'scan 01.laz'
    >>> filename_from_disposition('attachment; filename="../../etc/passwd"')
    '../../etc/passwd'
    """
    if not value:
        return None
    extended = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", value, re.IGNORECASE)
    if extended:
        try:
            return unquote(extended.group(2).strip().strip('"'), encoding=extended.group(1) or "utf-8")
        except LookupError:
            return unquote(extended.group(2).strip().strip('"'))
    plain = re.search(r'filename\s*=\s*("((?:[^"\\]|\\.)*)"|[^;]+)', value, re.IGNORECASE)
    if plain:
        return (plain.group(2) if plain.group(2) is not None else plain.group(1)).strip()
    return None


def cache_key(sub_id):
    """What stands for a sub in the cache's file names, one per id whatever the ids are: the id itself
    when it is a plain word (letters, digits and `-`, at most 64), else those characters of it, `.` and
    a hash of the whole id. A key never holds `_`, so `{key}_{name}` is unique per id too.

    >>> cache_key("5311"), cache_key("77"), cache_key("77."), cache_key("77_")
    ('5311', '77', '77.4159099263f1', '77.acb5bdebec95')
    """
    text = str(sub_id)
    if re.fullmatch(r"[0-9A-Za-z-]{1,64}", text):
        return text
    plain = re.sub(r"[^0-9A-Za-z-]+", "-", text).strip("-")[:40] or "id"
    return f"{plain}.{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def local_name(sub_id, disposition, url, original):
    """`{key}_{name}` (the key is the id, see cache_key) with the name from Content-Disposition, the URL
    path or the original file name, reduced to one safe path component (no separators, no `..`, no
    control characters).

    >>> local_name("5311", 'attachment; filename="../../etc/passwd"', "https://s/x/y.laz?sig=1", None)
    '5311_etc_passwd'
    >>> local_name("5311", None, "https://s/bucket/scan%2001.laz?X-Amz-Signature=abc", None)
    '5311_scan 01.laz'
    """
    candidates = [filename_from_disposition(disposition), unquote(urlsplit(url).path.rsplit("/", 1)[-1]), original]
    name = next((c for c in candidates if isinstance(c, str) and c.strip("/. ")), "pointcloud")
    # at most 180 bytes, so the key (64 at most) and the name fit the 255 bytes a file name may have
    name = safe_name(name).encode("utf-8")[:180].decode("utf-8", errors="ignore").rstrip(" ._") or "pointcloud"
    return f"{cache_key(sub_id)}_{name}"


def urllib3_errors():
    import urllib3.exceptions

    return urllib3.exceptions


def url_path(url):
    """A URL without its query string, which holds the storage signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Cache:
    """The download folder and its manifest: {"data": [listing items], "files": {id: record}}.

    The manifest is not trusted: a record is used only when its file is a plain name of a file of the
    folder (no separator, not hidden, no symlink out of the folder) that has the recorded size and sha256."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / MANIFEST

    @contextlib.contextmanager
    def locked(self):
        with open(self.folder / ".manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self):
        """The manifest, its parts of the wrong type left out."""
        try:
            manifest = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        manifest = manifest if isinstance(manifest, dict) else {}
        data, files = manifest.get("data"), manifest.get("files")
        manifest["data"] = [e for e in data if has_id(e)] if isinstance(data, list) else []
        manifest["files"] = {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) \
            else {}
        return manifest

    def write(self, manifest):
        """Replaces the manifest at once (the caller holds the lock, so a leftover temporary file is stale)."""
        for stale in self.folder.glob(f".{MANIFEST}.*.part"):
            stale.unlink(missing_ok=True)
        temp = self.path.with_name(f".{MANIFEST}.{os.getpid()}.part")
        temp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temp, self.path)

    def member(self, name):
        """The path of a file of the folder that a manifest names, or None when the name could lead
        elsewhere: not a plain file name, hidden (the folder's own files), or out through a symlink."""
        if not isinstance(name, str) or name in ("", MANIFEST) or name.startswith(".") \
                or any(c in name for c in "/\\\0"):
            return None
        path = self.folder / name
        try:
            inside = path.resolve().is_relative_to(self.folder.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            return None
        return path if inside else None

    def cached(self, sub_id, updated_at, since=None):
        """The cached file for a sub, if it was downloaded for the same `updated_at` (and, with `since`, at
        that time or later) and still has its size and sha256; a record that cannot be trusted is ignored
        with a warning."""
        record = self.read()["files"].get(str(sub_id))
        if not record or record.get("updated_at") != updated_at:
            return None
        downloaded = record.get("downloaded_at")
        if since is not None and not (isinstance(downloaded, (int, float)) and downloaded >= since):
            return None
        path = self.member(record.get("file"))
        problem = None
        if path is None:
            problem = f"names {shown(record.get('file'))}, which is not a file of download_dir"
        elif not path.is_file():
            problem = f"names {path.name}, which is not there"
        elif not isinstance(record.get("size"), int) or not isinstance(record.get("sha256"), str):
            problem = "has no size and sha256 for it"
        else:
            size, digest = file_digest(path)
            if size != record["size"]:
                problem = f"says {path.name} has {record['size']} bytes, it has {size}"
            elif digest != record["sha256"]:
                problem = f"gives another sha256 for {path.name} than its content has"
        if problem:
            log.warning("pointcloud %s: the cache manifest %s: ignored, downloading it again", sub_id, problem)
            return None
        return path

    @contextlib.contextmanager
    def sub_lock(self, key, stop=None, waiting=None, wait=True):
        """Holds the lock of one sub's download (flock on `.{key}.download.lock`) until the block ends,
        waiting while another run holds it (`waiting()` is called once then; setting `stop` ends the wait);
        without `wait`, yields None when it is held. The lock file also notes what the part file holds
        (see SubLock) and is removed when the block ends, so only a run that dies leaves it behind."""
        path = self.folder / f".{key}.download.lock"
        handle = self._acquire(path, stop, waiting, wait)
        if handle is None:
            yield None
            return
        try:
            yield SubLock(handle)
        finally:
            path.unlink(missing_ok=True)  # while still held: a run waiting on this file then opens a new one
            handle.close()

    @staticmethod
    def _acquire(path, stop, waiting, wait):
        """The open, flock-ed lock file at `path` (None when held elsewhere and not `wait`)."""
        while True:
            handle = open(path, "a+", encoding="utf-8")
            try:
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not wait:
                            handle.close()
                            return None
                        if waiting is not None:
                            waiting()
                            waiting = None
                        if stop.wait(0.1) if stop is not None else time.sleep(0.1):
                            raise Cancelled(f"cancelled while waiting for {path.name}") from None
                try:  # the run we waited for removed the file it locked: lock the one there now
                    if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                        return handle
                except FileNotFoundError:
                    pass
            except BaseException:
                handle.close()
                raise
            handle.close()

    def sweep(self, keep):
        """Removes the part and lock files that dead runs left for subs whose keys are not in `keep` (a
        part whose lock is free belongs to a run that died; the subs in `keep` resume theirs)."""
        suffixes = (".download.part", ".download.lock")
        keys = {p.name[1:-len(x)] for p in self.folder.glob(".*.download.*") for x in suffixes if p.name.endswith(x)}
        for key in sorted(keys - set(keep)):
            with self.sub_lock(key, wait=False) as lock:
                if lock is not None:
                    part = self.folder / f".{key}.download.part"
                    if part.exists():
                        log.info("removing %s, left by a run that stopped", part.name)
                        part.unlink(missing_ok=True)

    def record(self, sub_id, entries, file_record):
        with self.locked() as manifest:
            old = manifest["files"].get(str(sub_id))
            if old and old.get("file") != file_record["file"]:
                stale = self.member(old.get("file"))
                in_use = {str(r.get("file")) for k, r in manifest["files"].items() if k != str(sub_id)}
                if stale is not None and stale.name not in in_use:
                    with contextlib.suppress(OSError):
                        stale.unlink()
            manifest["files"][str(sub_id)] = file_record
            known = {entry_id(e): e for e in manifest["data"]}
            known.update({entry_id(e): e for e in entries})
            manifest["data"] = [known[k] for k in sorted(known, key=lambda k: (len(k), k))]
            self.write(manifest)


def has_id(entry):
    try:
        entry_id(entry)
        return True
    except (ValueError, AttributeError, TypeError):
        return False


def shown(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class SubLock:
    """A sub's held download lock; its file notes what the part file holds, for the next run to tell
    whether it may resume it."""

    def __init__(self, handle):
        self.handle = handle

    def noted(self):
        self.handle.seek(0)
        try:
            note = json.loads(self.handle.read() or "{}")
        except ValueError:
            return {}
        return note if isinstance(note, dict) else {}

    def note(self, **facts):
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(facts))
        self.handle.flush()


class DownloadProgress:
    """Bytes, rate and files done across the download threads, logged at most every `interval` seconds."""

    def __init__(self, files, interval=5.0, clock=time.monotonic):
        self.files, self.interval, self.clock = files, interval, clock
        self.lock = threading.Lock()
        self.done = 0
        self.bytes = 0
        self.started = self.shown = clock()

    def add(self, count):
        with self.lock:
            self.bytes += count
            if self.clock() - self.shown >= self.interval:
                self.show()

    def file_done(self):
        with self.lock:
            self.done += 1
            self.show()

    def show(self):
        self.shown = self.clock()
        rate = self.bytes / 1e6 / max(self.shown - self.started, 1e-6)
        log.info("downloads: %d/%d files, %.1f MB, %.1f MB/s", self.done, self.files, self.bytes / 1e6, rate)


class RateFloor:
    """The lowest rate a download may keep: `add(count)` after each block says, once a window of
    `window` seconds has passed, whether the bytes in it came slower than `rate` bytes/s (a text for the
    message) or not (None); each window is measured on its own. A rate of 0 is no floor.

    >>> clock = iter([0.0, 0.5, 1.2, 1.4, 2.6]).__next__
    >>> floor = RateFloor(1000, 1.0, clock)
    >>> floor.add(700), floor.add(600), floor.add(100), floor.add(100)
    (None, None, None, 'too slow (0.1 KB/s over 1 s; min_rate 1 KB/s)')
    """

    def __init__(self, rate, window, clock=time.monotonic):
        self.rate, self.window, self.clock = rate, window, clock
        self.start, self.bytes = clock(), 0

    def add(self, count):
        self.bytes += count
        now = self.clock()
        if not self.rate or now - self.start < self.window:
            return None
        rate = self.bytes / (now - self.start)
        self.start, self.bytes = now, 0
        if rate >= self.rate:
            return None
        return f"too slow ({rate / 1000:.1f} KB/s over {self.window:g} s; min_rate {self.rate / 1000:g} KB/s)"


class Cancelled(CupixError):
    """The run stopped while a download was under way."""


class Downloader:
    """Fetches one sub's file; the session used for storage never carries the token.

    A sub is downloaded under its lock in the download folder, so runs sharing the folder take turns: one
    that waited finds the other's file in the cache (with `refresh`, a file downloaded at `since`, the
    start of the run, or later counts as fresh). A part file whose lock is free was left by a run that
    died: it is resumed when it holds the same version of the sub, else removed."""

    def __init__(self, client, cache, storage_session=None, refresh=False, stop=None, progress=None, since=None,
                 min_rate=0.0, rate_window=30.0):
        self.client = client
        self.cache = cache
        self.storage = storage_session or client.new_session()
        self.own_storage = storage_session is None
        self.refresh = refresh
        self.min_rate, self.rate_window = min_rate, rate_window  # bytes/s over seconds; 0: no floor
        self.since = time.time() if since is None else since
        self.stop = stop or threading.Event()
        self.progress = progress or DownloadProgress(1, interval=float("inf"))

    def fetch(self, sub, endpoint, entries):
        """The local path of a sub's file, downloaded unless the cache already holds it."""
        try:
            return self._fetch(sub, endpoint, entries)
        finally:
            if self.own_storage:
                self.storage.close()

    def _fetch(self, sub, endpoint, entries):
        sub_id, updated_at = str(sub["id"]), sub.get("updated_at")
        key = cache_key(sub_id)

        def waiting():
            log.info("pointcloud %s: waiting for another run that is downloading it", sub_id)

        with self.cache.sub_lock(key, self.stop, waiting) as lock:
            cached = self.cache.cached(sub_id, updated_at, since=self.since if self.refresh else None)
            if cached is not None:
                log.info("pointcloud %s: using the cached %s", sub_id, cached.name)
                self.progress.file_done()
                return cached
            temp = self.cache.folder / f".{key}.download.part"
            left = lock.noted()
            if temp.exists():
                if not self.refresh and updated_at and left.get("updated_at") == updated_at \
                        and left.get("endpoint") == endpoint:
                    log.info("pointcloud %s: resuming the %d bytes an earlier run left", sub_id, temp.stat().st_size)
                else:
                    log.info("pointcloud %s: removing the partial file an earlier run left", sub_id)
                    temp.unlink()
            started = time.monotonic()
            try:
                name, url = self.stream_to(temp, sub, endpoint, lock, left.get("url_path"))
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            final = self.cache.folder / name
            os.replace(temp, final)
            size, digest = file_digest(final)
            self.cache.record(sub_id, entries, {"id": sub_id, "updated_at": updated_at, "size": size,
                                                "sha256": digest, "url_path": url_path(url), "file": name,
                                                "endpoint": endpoint, "downloaded_at": time.time()})
        seconds = max(time.monotonic() - started, 1e-6)
        log.info("pointcloud %s: downloaded %s (%.1f MB in %.1f s, %.1f MB/s)", sub_id, name, size / 1e6, seconds,
                 size / 1e6 / seconds)
        self.progress.file_done()
        return final

    def stream_to(self, temp, sub, endpoint, lock=None, left_path=None):
        """Streams the storage file into `temp` (resuming what it holds, when `left_path`, the storage
        path it came from, is the link's), retrying; returns (local name, storage URL)."""
        requests = self.client.requests
        sub_id = str(sub["id"])
        original = meta(sub).get("original_file_name")
        named = f"pointcloud {sub_id} ({sub.get('name')})"
        what = f"{named}: storage download from {endpoint}"

        def location():
            try:
                return self.client.download_location(endpoint)
            except CupixError as error:
                raise self.client.error(f"{named}: {error}", error.status) from error

        url = location()

        def noted(link):
            """Notes what the part holds; a part of another storage file is started again."""
            nonlocal left_path
            if left_path != url_path(link):
                temp.unlink(missing_ok=True)
                left_path = url_path(link)
            if lock is not None:
                lock.note(updated_at=sub.get("updated_at"), endpoint=endpoint, url_path=left_path)

        noted(url)

        def attempt():
            nonlocal url
            have = temp.stat().st_size if temp.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            timeout = self.client.timeout
            stalled = f"timeout (no answer within {timeout:g} s)"
            with self.client.watchdog.watch(timeout) as watch:
                try:
                    with self.open_storage(url, headers, what) as response:
                        status = response.status_code
                        if status in (400, 403):  # most likely an expired link: ask the API for a fresh one
                            log.debug("%s: HTTP %d from storage, asking for a fresh link", what, status)
                            url = location()
                            noted(url)
                            raise Retry(response)
                        if status in RETRYABLE:
                            raise Retry(response)
                        if status == 404:
                            raise self.client.error(f"{what}: the storage answered 404 for {url_path(url)}", 404)
                        if status not in (200, 206):
                            raise self.client.error(f"{what}: HTTP {status} from storage", status)
                        if status == 206 and self.range_start(response) != have:
                            temp.unlink(missing_ok=True)  # a part we did not ask for: start again from the first byte
                            raise Retry(response)
                        resumed = status == 206
                        expected = self.expected_size(response, have if resumed else 0)
                        stalled = f"timeout (no data for {timeout:g} s)"
                        watch.postpone(timeout)
                        floor = RateFloor(self.min_rate, self.rate_window)
                        with open(temp, "ab" if resumed else "wb") as target:
                            # read1: what has arrived, at once (a part file holds every byte received, for a
                            # resume, and the rate is measured as bytes come)
                            while block := response.raw.read1(BLOCK, decode_content=True):
                                if self.stop.is_set():
                                    raise Cancelled(f"{what}: cancelled")
                                watch.postpone(timeout)
                                target.write(block)
                                target.flush()
                                self.progress.add(len(block))
                                if slow := floor.add(len(block)):
                                    raise Retry(Stalled(slow))
                        if watch.expired:
                            raise Retry(Stalled(stalled))
                        size = temp.stat().st_size
                        if expected is not None and size != expected:
                            log.debug("%s: got %d of %d bytes", what, size, expected)
                            if size > expected:
                                temp.unlink()
                            raise Retry(response)
                        return local_name(sub_id, response.headers.get("Content-Disposition"), url, original), url
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                        urllib3_errors().HTTPError) as error:
                    raise Retry(Stalled(stalled) if watch.expired else error) from None
                except requests.RequestException as error:  # its text may hold the signed link
                    raise self.client.error(f"{what}: the storage request could not be made "
                                            f"({type(error).__name__})") from None

        return self.client.retried(attempt, what)  # fetch() removes `temp` if this fails

    def open_storage(self, url, headers, what):
        """The storage's answer to a GET of `url`, following its redirects by hand: at most MAX_REDIRECTS,
        to http(s) links only (messages name the scheme, never the signed link)."""
        link = url
        for _ in range(MAX_REDIRECTS + 1):
            response = self.storage.get(link, headers=headers, stream=True, timeout=self.client.timeout,
                                        allow_redirects=False)
            if not response.is_redirect:
                return response
            response.close()
            link = urljoin(link, response.headers["Location"].strip())
            problem = link_problem(link)
            if problem:
                raise self.client.error(f"{what}: the storage redirected to a link that is refused: {problem}")
        raise self.client.error(f"{what}: the storage redirected more than {MAX_REDIRECTS} times (a redirect loop)")

    @staticmethod
    def range_start(response):
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None

    @staticmethod
    def expected_size(response, already):
        length = response.headers.get("Content-Length")
        if length is None or not length.isdigit() or response.headers.get("Content-Encoding"):
            return None
        return already + int(length)
