"""`source.cupix`: lists a capture's point clouds, keeps the finished subs, and downloads their files."""
import fnmatch
import logging
import os
import queue
import re
import threading
import time
import weakref
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace

from pipeline.errors import OptionError, PipelineError, SourceError
from pipeline.model import Item
from pipeline.options import Kind, Option, boolean, choice, integer, list_of, number, path, shown, text
from pipeline.stage import Source

from .listing import Listing, entry_id, meta, parent_id
from .client import Backoff, CupixClient, CupixError
from .georeference import described as described_facility, facility_key, facility_record

log = logging.getLogger(__name__)

TYPES = ("uploaded", "3d_reconstructed", "all")
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")  # printable ASCII: a header value that cannot break a request


def identifier():
    """A Cupix id, written as an integer or a string, kept as text."""
    def check(value, context):
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
            raise OptionError(f"expected an id, got {shown(value)}")
        return str(value).strip()
    return Kind("id", check)


def download_endpoint(sub):
    """The API endpoint that redirects to a sub's file: the upload, or for a 3D reconstruction its PLY."""
    sub_id, kind = sub["id"], sub.get("pointcloud_type")
    if kind == "3d_reconstructed":
        if not sub.get("ply_uploaded_at"):
            raise SourceError(f"pointcloud {sub_id} ({sub.get('name')}) is a 3D reconstruction without a PLY resource "
                              "(ply_uploaded_at is empty): its .cpc file is a proprietary format this tool cannot read")
        return f"/pointclouds/{sub_id}/resources/ply/download"
    return f"/pointclouds/{sub_id}/download"


class CupixSource(Source):
    """Lists a Cupix capture's point clouds, keeps the finished subs and downloads them (token never logged)."""

    options = Source.options + (
        Option("base_url", text(), "the API, e.g. https://acme.cupix.works/api/v1"),
        Option("token", text(), "the personal API token, e.g. ${CUPIX_API_KEY}", secret=True),
        Option("capture_id", identifier(), "list the point clouds of this capture", default=None),
        Option("record_id", identifier(), "list the point clouds of this record", default=None),
        Option("cluster_id", identifier(), "list the point clouds of this cluster", default=None),
        Option("ids", list_of(identifier(), min_length=1), "these sub ids (fetched one by one, or filtering a "
               "listing)", default=None),
        Option("pointcloud_type", choice(*TYPES), "which point clouds", default="all"),
        Option("names", list_of(text(), min_length=1), "glob filters on sub names, e.g. ['*.las']", default=None),
        Option("states", list_of(text(), min_length=1), "states to keep", default=["done"]),
        Option("download_dir", path(), "where files are cached, relative to the config's folder (runs may share "
               "it: they take turns per sub)", default=".cupix-cache"),
        Option("concurrency", integer(minimum=1, maximum=32), "parallel downloads", default=4),
        Option("timeout", number(minimum=1), "seconds: an API request must be answered in full within it, and a "
               "download must start within it and never wait longer for its next byte (else it is retried)",
               default=60.0),
        Option("min_rate", number(minimum=0), "KB/s (1 KB = 1000 bytes): a download slower than this over "
               "min_rate_window seconds is left and retried, resuming with Range where the storage allows it (then "
               "after `retries` the run stops naming the sub); 0: no minimum", default=10.0),
        Option("min_rate_window", number(minimum=1), "seconds over which min_rate is measured, one window after "
               "another", default=30.0),
        Option("retries", integer(minimum=0, maximum=20), "retries of a failed request", default=5),
        Option("backoff", number(minimum=0), "seconds before the first retry (doubles each time)", default=0.5),
        Option("refresh", boolean(), "ignore the cache: download every sub again, except a file that another run "
               "downloaded after this one started (the CLI's --refresh sets it)", default=False),
        Option("facility", text(), "the facility (project) whose georeference is recorded with each sub, never "
               "applied: its key (the KEY in https://TEAM.cupix.works/pj/KEY), or none (default: the facility the "
               "listing names for each sub)", default=None),
    )
    template_fields = ("name", "id", "index", "sub", "group", "capture")

    @classmethod
    def check(cls, options):
        if not TOKEN_PATTERN.fullmatch(options["token"]):
            raise OptionError("expected one word without spaces or control characters (not shown: it is a secret)",
                              "token")
        if not any(options[k] for k in ("capture_id", "record_id", "cluster_id", "ids")):
            raise OptionError("give at least one of capture_id, record_id, cluster_id or ids", "capture_id")
        if not options["base_url"].startswith(("http://", "https://")):
            raise OptionError(f"expected an http(s) URL, got {options['base_url']!r}", "base_url")
        if options["facility"] is not None and not TOKEN_PATTERN.fullmatch(options["facility"]):
            raise OptionError(f"expected a facility key (the KEY in https://TEAM.cupix.works/pj/KEY) or none, got "
                              f"{options['facility'][:40]!r}", "facility")

    def __init__(self, options, label=""):
        super().__init__(options, label)
        self._forget_connections()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: me() and me()._forget_connections())

    def _forget_connections(self):
        """A worker process must not share the parent's HTTP connections or download threads."""
        self._client = None
        self._downloads = {}
        self._pool = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress = None
        self._swept = False  # a process sweeps the cache once, before its first download

    def client(self):
        if self._client is None:
            o = self.options
            self._client = CupixClient(o["base_url"], o["token"], timeout=o["timeout"], retries=o["retries"],
                                       backoff=Backoff(base=o["backoff"]))
        return self._client

    def cache(self):
        from .download import Cache

        return Cache(self.options["download_dir"])

    def list_entries(self):
        o, client = self.options, self.client()
        entries = []
        if o["capture_id"] or o["record_id"] or o["cluster_id"]:
            entries = client.pointclouds(capture_id=o["capture_id"], record_id=o["record_id"],
                                         cluster_id=o["cluster_id"], pointcloud_type=o["pointcloud_type"])
        elif o["ids"]:
            entries = [client.pointcloud(i) for i in o["ids"]]
        return entries

    def select(self, listing):
        """The subs to read, in listing order, with a log line for each point cloud left out."""
        o = self.options
        wanted_ids = set(o["ids"] or [])
        chosen = []
        for attrs in listing.by_id.values():
            pid, name = attrs["id"], str(attrs.get("name") or "")
            if attrs.get("kind") != "sub":
                log.info("skipping pointcloud %s (%s): a %s, it has no file", pid, name, attrs.get("kind") or "group")
            elif wanted_ids and pid not in wanted_ids:
                log.info("skipping pointcloud %s (%s): not in ids", pid, name)
            elif attrs.get("state") not in o["states"]:
                log.info("skipping pointcloud %s (%s): state %s", pid, name, attrs.get("state"))
            elif o["pointcloud_type"] != "all" and attrs.get("pointcloud_type") != o["pointcloud_type"]:
                log.info("skipping pointcloud %s (%s): type %s", pid, name, attrs.get("pointcloud_type"))
            elif o["names"] and not any(fnmatch.fnmatch(name, pattern) for pattern in o["names"]):
                log.info("skipping pointcloud %s (%s): name does not match %s", pid, name, ", ".join(o["names"]))
            else:
                chosen.append(attrs)
        return chosen

    @contextmanager
    def _no_token(self):
        """Errors leave the source without the token, whatever server text they quote."""
        try:
            yield
        except PipelineError as error:
            token = self.options["token"]
            if token and token in str(error):
                error.args = (str(error).replace(token, "***"),)
                error.__cause__, error.__suppress_context__ = None, True
            raise

    def items(self):
        with self._no_token():
            return self._items()

    def _items(self):
        from .alignment import sixteen

        entries = self.list_entries()
        listing = Listing(entries)
        subs = self.select(listing)
        try:
            entries += listing.find_groups(self.client().pointcloud, subs)
        except CupixError as error:
            sub = next(s for s in subs if parent_id(s) not in listing.by_id)
            raise SourceError(f"pointcloud {sub['id']}: its group {parent_id(sub)} cannot be fetched: {error}") from error
        raw = {entry_id(e): e for e in entries}
        facilities = self.facilities(subs, listing)
        items = []
        for index, sub in enumerate(subs):
            group = listing.group_of(sub)
            if group is None:
                raise SourceError(f"pointcloud {sub['id']}: its group {parent_id(sub)} was not found")
            for attrs, kind in ((sub, "sub"), (group, "group")):
                try:
                    sixteen(meta(attrs).get("tm"), "tm")
                except ValueError:
                    raise SourceError(f"pointcloud {sub['id']} (group {group['id']}): the {kind}'s meta.prop.tm is "
                                      "missing or not 16 finite numbers") from None
            endpoint = download_endpoint(sub)
            capture = self.options["capture_id"] or listing.capture_of(sub) or listing.capture_of(group) or ""
            prop = meta(sub)
            size = prop.get("original_size_in_mb")
            described = f"{sub.get('pointcloud_type')}{f', {size} MB' if size else ''}"
            items.append(Item(id=sub["id"], name=str(sub.get("name") or sub["id"]), index=index,
                              location=f"cupix pointcloud {sub['id']} ({described}) via {endpoint}",
                              point_count=prop.get("original_point_count"),
                              fields={"sub": sub["id"], "group": group["id"], "capture": capture},
                              metadata={"cupix": {"sub": sub, "group": group, "capture_id": capture or None,
                                                  "facility": facilities[sub["id"]]},
                                        "endpoint": endpoint, "entries": [raw[sub["id"]], raw[group["id"]]]}))
        return items

    def facilities(self, subs, listing):
        """{sub id: what is recorded of its facility (see georeference.py), or None}: the facility is the one
        `facility` names, else the one the listing names for the sub (or its group); its georeference is asked
        once per facility and never applied, and a line says what was recorded."""
        given = self.options["facility"]
        if given == "none":
            return {sub["id"]: None for sub in subs}
        keys = {}
        for sub in subs:
            named = facility_key(sub) or facility_key(listing.group_of(sub))
            if given and named and named != given:
                raise SourceError(f"pointcloud {sub['id']} belongs to facility {named!r} (the listing's facility.key), "
                                  f"not to {given!r} (`facility`)")
            keys[sub["id"]] = given or named
        unnamed = [sub_id for sub_id, key in keys.items() if key is None]
        if unnamed:
            log.info("pointcloud %s: the listing names no facility, so no georeference is recorded; set `facility` to "
                     "the project's key (the KEY in https://TEAM.cupix.works/pj/KEY)", ", ".join(unnamed))
        records = {}
        for sub_id, key in keys.items():
            if key is not None and key not in records:
                try:
                    attributes = self.client().facility(key)
                except CupixError as error:
                    raise SourceError(f"pointcloud {sub_id}: the georeference of its facility {key!r} cannot be read: "
                                      f"{error}") from error
                records[key] = facility_record(key, attributes, given=bool(given))
                log.info("%s", described_facility(records[key]))
        return {sub_id: records.get(key) for sub_id, key in keys.items()}

    def prepare(self, items):
        """What every download of the run needs, as plain data: the listing entries of the run's subs and
        groups (kept in the cache manifest), the cache keys of its subs (a sweep of the cache leaves their
        parts alone) and the time the run started (with `refresh`, a file downloaded since is fresh). The
        decisions share one list of entries and one of keys, which a pickled plan then holds once."""
        from .download import cache_key

        entries = list({entry_id(e): e for item in items for e in item.metadata["entries"]}.values())
        keys = sorted(cache_key(item.metadata["cupix"]["sub"]["id"]) for item in items)
        run = {"entries": entries, "keys": keys, "since": time.time()}
        return {item.index: run for item in items}

    def prefetch(self, items, decisions):
        """Starts downloading every item, `concurrency` at a time; `read` waits for its own."""
        from .download import DownloadProgress

        with self._lock:
            if self._pool is None:
                self._progress = DownloadProgress(len(items))
                self._pool = DaemonPool(self.options["concurrency"])
                for item in items:
                    self._downloads[item.index] = self._pool.submit(self._fetch, item, decisions[item.index])

    def _fetch(self, item, run):
        from .download import Downloader

        cache = self.cache()
        with self._lock:
            if not self._swept:  # the parts that dead runs left for subs this run does not fetch
                self._swept = True
                cache.sweep(set(run["keys"]))
        o = self.options
        downloader = Downloader(self.client(), cache, refresh=o["refresh"], stop=self._stop, progress=self._progress,
                                since=run["since"], min_rate=o["min_rate"] * 1000, rate_window=o["min_rate_window"])
        return downloader.fetch(item.metadata["cupix"]["sub"], item.metadata["endpoint"], run["entries"])

    def local_file(self, item, run):
        with self._lock:
            future = self._downloads.get(item.index)
        with self._no_token():
            return future.result() if future is not None else self._fetch(item, run)

    @contextmanager
    def read(self, item, decision=None):
        """The sub's file as a point stream, whose first step records its facility's georeference (for the
        report; nothing is applied)."""
        from ..files import read_file

        path = self.local_file(item, decision)
        with read_file(path, self.options["chunk_size"]) as stream:
            facility = item.metadata["cupix"].get("facility")
            step = {"stage": self.label, "facility": dict(facility) if facility else None}
            yield replace(stream, info=stream.info.with_step(step))

    def close(self):
        """Stops downloads still under way (after a failure or Ctrl-C) without waiting for a slow server:
        the threads stop at their next block, or die with the process."""
        self._stop.set()
        for future in self._downloads.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown()


class DaemonPool:
    """A few daemon threads running submitted calls: unlike ThreadPoolExecutor, the process may exit (e.g. on
    Ctrl-C) while one is still blocked on the network."""

    def __init__(self, workers):
        self.tasks = queue.SimpleQueue()
        self.workers = workers
        for worker in range(workers):
            threading.Thread(target=self.work, name=f"cupix-download-{worker}", daemon=True).start()

    def submit(self, function, *args):
        future = Future()
        self.tasks.put((future, function, args))
        return future

    def work(self):
        while (task := self.tasks.get()) is not None:
            future, function, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)

    def shutdown(self):
        for _ in range(self.workers):
            self.tasks.put(None)
