"""A bound on a request's whole time, which socket timeouts alone do not give: `requests`' timeout is
per socket read, so a server that sends one byte every few seconds holds a request for ever.

`Watchdog.watch(seconds)` marks the requests that its block makes; when the deadline passes (it can be
postponed, e.g. each time a download receives data), a thread shuts the request's socket down, which wakes
the read blocked on it, and the watch says it `expired`. The sockets are found through the connection
classes of the sessions that `watched_session` makes, directly or through an HTTP proxy (a request through
a SOCKS proxy or an injected session is not cut, but its caller still sees `expired` once it returns).
"""
import contextlib
import contextvars
import os
import socket
import threading
import time

import requests
from urllib3 import connection, connectionpool, poolmanager

CURRENT = contextvars.ContextVar("cupix_watch", default=None)


class Watch:
    """One block's deadline and the connection its request is using."""

    def __init__(self, seconds):
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self.finished = False
        self.connection = None
        self.cut = False

    def postpone(self, seconds):
        """Moves the deadline to `seconds` from now (progress was made)."""
        with self.lock:
            if not self.expired:
                self.deadline = time.monotonic() + seconds

    def attach(self, conn):
        with self.lock:
            if not self.finished:
                self.connection = conn

    def expire(self):
        """Marks the watch expired and shuts its connection's socket down; False while that socket does
        not exist yet (the watchdog tries again)."""
        with self.lock:
            self.expired = True
            sock = getattr(self.connection, "sock", None)
            if self.finished or self.cut or sock is None:
                return self.finished or self.cut
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self.cut = True
            return True

    def finish(self):
        with self.lock:
            self.finished = True
            self.connection = None


class Watchdog:
    """One thread, started when a watch begins and ending when none is left, that expires the watches
    whose deadline has passed."""

    def __init__(self):
        self._condition = threading.Condition()
        self._watches = set()
        self._thread = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def watch(self, seconds):
        watch = Watch(seconds)
        with self._condition:
            if self._pid != os.getpid():  # a forked worker: the parent's thread is not here
                self._pid, self._thread, self._watches = os.getpid(), None, set()
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cupix-watchdog", daemon=True)
                self._thread.start()
            self._condition.notify()
        token = CURRENT.set(watch)
        try:
            yield watch
        finally:
            CURRENT.reset(token)
            watch.finish()
            with self._condition:
                self._watches.discard(watch)
                self._condition.notify()  # the thread ends at once when no watch is left

    def _run(self):
        with self._condition:
            while self._watches:
                now = time.monotonic()
                waiting = [w for w in self._watches if w.deadline <= now and not w.expire()]
                upcoming = [w.deadline - now for w in self._watches if w.deadline > now]
                self._condition.wait(0.05 if waiting else min(upcoming, default=1.0))
            self._thread = None


def _attach(conn):
    watch = CURRENT.get()
    if watch is not None:
        watch.attach(conn)


class Watched:
    """A connection that puts itself under the current request's watch when it connects or sends."""

    def connect(self):
        _attach(self)
        super().connect()

    def request(self, *args, **kwargs):
        _attach(self)
        return super().request(*args, **kwargs)


class WatchedHTTPConnection(Watched, connection.HTTPConnection):
    pass


class WatchedHTTPSConnection(Watched, connection.HTTPSConnection):
    pass


class WatchedHTTPConnectionPool(connectionpool.HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(connectionpool.HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


POOLS = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections tell the current watch which socket to cut."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is poolmanager.ProxyManager:  # a SOCKS manager keeps its own pools (and is not cut)
            manager.pool_classes_by_scheme = POOLS
        return manager


def watched_session():
    session = requests.Session()
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
