"""A loopback stand-in for Cupix: an API host and a separate storage host, each a real HTTP server on
127.0.0.1, with the faults a real deployment shows (expiring links, Range or not, dropped connections,
short bodies, 503 bursts, hostile file names). Every request is recorded for assertions."""
import hashlib
import hmac
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

SECRET = b"stand-in signing key"


def matches(attributes, key, value):
    """Whether an item passes a listing filter such as capture_id=1234 (its `capture` is {"id": 1234})."""
    found = attributes.get(key.removesuffix("_id"), attributes.get(key))
    found = found.get("id") if isinstance(found, dict) else found
    return str(found) == str(value)


@dataclass
class Faults:
    range_support: bool = True
    drop_after: dict = field(default_factory=dict)  # sub id -> bytes sent before the connection drops, once
    short_body: dict = field(default_factory=dict)  # sub id -> bytes sent while promising the whole length, once
    storage_503: int = 0  # the first N storage requests answer 503
    api_503: int = 0  # the first N API requests answer 503 (with Retry-After: 0)
    api_429: int = 0
    expire_first_links: int = 0  # the first N links given out are already expired (storage answers 403)
    disposition: dict = field(default_factory=dict)  # sub id -> raw Content-Disposition header
    storage_delay: float = 0.0  # seconds before each storage answer
    slow: dict = field(default_factory=dict)  # sub id -> seconds before that sub's storage answer
    body_seconds: float = 0.0  # each storage body is sent in ten pieces spread over this time
    stall: dict = field(default_factory=dict)  # sub id -> (bytes, seconds): send that many, then wait, once
    endless_pages: bool = False
    api_trickle: float = 0.0  # every API answer (status line and headers too) comes one byte this many seconds apart
    trickle: dict = field(default_factory=dict)  # sub id -> (bytes, seconds, times): after that many bytes, one
    #                                               byte every `seconds`, for the first `times` requests
    location: dict = field(default_factory=dict)  # sub id -> "relative" or a scheme ("ftp"): how /download answers
    storage_redirect: dict = field(default_factory=dict)  # sub id -> "loop" or a scheme: storage redirects there  # every listing page answers the first page's items and a next_page


@dataclass
class Recorded:
    host: str
    path: str
    query: dict
    headers: dict
    status: int = 0


class QuietServer(ThreadingHTTPServer):
    """A client that stops reading (a cancelled or abandoned download) is not an error of the server."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError
            super().handle_error(request, client_address)


class CupixStandIn:
    def __init__(self, items, files, token="secret-token", per_page=2, faults=None, facilities=(), records=(),
                 captures=(), facility_details=None):
        self.items = items  # listing entries {"id", "type", "attributes"} in listing order
        self.files = files  # sub id -> (file name, bytes)
        self.token = token
        self.per_page = per_page
        self.faults = faults or Faults()
        self.extra = {"/facilities": list(facilities), "/records": list(records), "/captures": list(captures)}
        self.facility_details = facility_details or {}  # facility key -> the attributes GET /facilities/{key} gives
        self.requests = []
        self.lock = threading.Lock()
        self.links_given = 0
        self.storage_hits = 0
        self.storage_active = 0
        self.storage_most_active = 0  # the most storage requests served at the same time
        self.api_hits = 0
        self.api = QuietServer(("127.0.0.1", 0), self.handler(self.api_get))
        self.storage = QuietServer(("127.0.0.1", 0), self.handler(self.storage_get))

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.api.server_address[1]}/api/v1"

    @property
    def storage_url(self):
        return f"http://127.0.0.1:{self.storage.server_address[1]}"

    def __enter__(self):
        for server in (self.api, self.storage):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        for server in (self.api, self.storage):
            server.shutdown()
            server.server_close()

    def handler(self, serve):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                parts = urlsplit(self.path)
                record = Recorded(self.server is stand_in.api and "api" or "storage", parts.path,
                                  parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()})
                with stand_in.lock:
                    stand_in.requests.append(record)
                serve(self, parts.path, record.query, record)

            def log_message(self, *args):
                pass

        return Handler

    # --- answers ------------------------------------------------------------------------------------------

    def send(self, handler, status, body=b"", headers=(), record=None, length=None):
        if record is not None:
            record.status = status
        if handler.server is self.api and self.faults.api_trickle:
            head = [f"HTTP/1.1 {status} Trickling", *(f"{k}: {v}" for k, v in headers),
                    f"Content-Length: {len(body) if length is None else length}", "Connection: close", "", ""]
            handler.close_connection = True
            return self.trickled(handler, "\r\n".join(head).encode() + body, self.faults.api_trickle)
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)

    def json(self, handler, status, document, record, headers=()):
        self.send(handler, status, json.dumps(document).encode(), [("Content-Type", "application/json"), *headers],
                  record)

    def api_get(self, handler, path, query, record):
        with self.lock:
            self.api_hits += 1
            hit = self.api_hits
        if hit <= self.faults.api_503:
            return self.json(handler, 503, {"result": None}, record, [("Retry-After", "0")])
        if hit <= self.faults.api_503 + self.faults.api_429:
            return self.json(handler, 429, {"result": None}, record, [("Retry-After", "0")])
        if path.startswith("/bucket/"):  # a download link relative to the API
            return self.serve_storage(handler, path, query, record)
        if handler.headers.get("X-CUPIX-AUTH") != self.token:
            return self.send(handler, 401, b"", record=record)
        route = path.removeprefix("/api/v1")
        parts = route.strip("/").split("/")
        if route == "/pointclouds":
            wanted = {k: query[k][0] for k in ("capture_id", "record_id", "cluster_id") if k in query}
            chosen = [i for i in self.items if all(matches(i["attributes"], k, v) for k, v in wanted.items())]
            return self.page(handler, chosen, query, record)
        if route in self.extra:
            return self.page(handler, self.extra[route], query, record)
        if len(parts) == 2 and parts[0] == "facilities":
            attributes = self.facility_details.get(parts[1])
            if attributes is None:
                return self.send(handler, 404, b"", record=record)
            data = {"id": str(attributes.get("id", 1)), "type": "facility", "attributes": attributes}
            return self.json(handler, 200, {"result": {"data": data}, "session": None}, record)
        if len(parts) == 2 and parts[0] == "pointclouds":
            item = self.find(parts[1])
            if item is None:
                return self.send(handler, 404, b"", record=record)
            return self.json(handler, 200, {"result": {"data": item}, "session": None}, record)
        if parts[0] == "pointclouds" and parts[-1] == "download" and len(parts) in (3, 5):
            item = self.find(parts[1])
            if item is None or item["attributes"].get("kind") != "sub" or parts[1] not in self.files:
                return self.send(handler, 404, b"", record=record)
            link = self.signed_link(parts[1])
            how = self.faults.location.get(parts[1])
            if how == "relative":  # the same path on the API host, which serves it too
                link = link.removeprefix(self.storage_url)
            elif how:
                link = f"{how}:{link.split(':', 1)[1]}"
            return self.send(handler, 302, b"", [("Location", link)], record)
        return self.send(handler, 404, b"", record=record)

    def find(self, identifier):
        return next((i for i in self.items if str(i["attributes"]["id"]) == str(identifier)), None)

    def page(self, handler, chosen, query, record):
        number = int(query.get("page", ["1"])[0])
        size = self.per_page
        pages = max(1, -(-len(chosen) // size))
        data = chosen[(number - 1) * size:number * size]
        pagination = {"total_entries": len(chosen), "total_pages": pages, "per_page": size,
                      "previous_page": number - 1 or None, "current_page": number,
                      "next_page": number + 1 if number < pages else None}
        if self.faults.endless_pages:
            data = chosen[:size]
            pagination.update(total_pages=None, next_page=number + 1)
        self.json(handler, 200, {"result": {"data": data, "pagination": pagination}, "session": None}, record)

    def signature(self, path, expires):
        return hmac.new(SECRET, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def signed_link(self, sub_id):
        with self.lock:
            self.links_given += 1
            expired = self.links_given <= self.faults.expire_first_links
        name = self.files[sub_id][0]
        path = f"/bucket/{sub_id}/{quote(name)}"
        expires = "0" if expired else "9999999999"
        return f"{self.storage_url}{path}?X-Expires={expires}&X-Signature={self.signature(path, expires)}"

    def storage_get(self, handler, path, query, record):
        with self.lock:
            self.storage_active += 1
            self.storage_most_active = max(self.storage_most_active, self.storage_active)
        try:
            self.serve_storage(handler, path, query, record)
        finally:
            with self.lock:
                self.storage_active -= 1

    def serve_storage(self, handler, path, query, record):
        with self.lock:
            self.storage_hits += 1
            hit = self.storage_hits
        delay = self.faults.storage_delay + self.faults.slow.get(path.split("/")[2] if path.count("/") >= 2 else "", 0)
        if delay:
            import time
            time.sleep(delay)
        if hit <= self.faults.storage_503:
            return self.send(handler, 503, b"", record=record)
        expires = query.get("X-Expires", [""])[0]
        if query.get("X-Signature", [""])[0] != self.signature(path, expires) or expires == "0":
            return self.send(handler, 403, b"<Error>AccessDenied: Request has expired</Error>", record=record)
        sub_id = path.split("/")[2]
        redirect = self.faults.storage_redirect.get(sub_id)
        if redirect:  # to itself, for ever, or to another scheme
            here = f"{self.storage_url}{handler.path}"
            target = here if redirect == "loop" else f"{redirect}:{here.split(':', 1)[1]}"
            return self.send(handler, 302, b"", [("Location", target)], record)
        name, body = self.files[sub_id]
        headers = [("Content-Type", "application/octet-stream")]
        disposition = self.faults.disposition.get(sub_id)
        if disposition:
            headers.append(("Content-Disposition", disposition))
        start = 0
        wanted = handler.headers.get("Range")
        status = 200
        if wanted and self.faults.range_support:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            status = 206
            headers += [("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"), ("Accept-Ranges", "bytes")]
        part = body[start:]
        with self.lock:
            drop = self.faults.drop_after.pop(sub_id, None)
            short = self.faults.short_body.pop(sub_id, None)
            stall = self.faults.stall.pop(sub_id, None)
        if stall is not None:
            return self.stalled(handler, status, headers, part, *stall, record)
        with self.lock:
            count, seconds, times = self.faults.trickle.get(sub_id, (0, 0, 0))
            if times:
                self.faults.trickle[sub_id] = (count, seconds, times - 1)
        if times:
            self.stalled(handler, status, headers, part, count, 0, record, [b""])
            return self.trickled(handler, part[count:], seconds)
        if drop is not None or short is not None:
            record.status = status
            handler.send_response(status)
            for key, value in headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(part)))
            handler.end_headers()
            handler.wfile.write(part[:drop if drop is not None else short])
            handler.wfile.flush()
            handler.close_connection = True
            if drop is not None:  # an abrupt reset rather than a clean close
                import socket
                import struct
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if self.faults.body_seconds:
            pieces = [part[i * len(part) // 10:(i + 1) * len(part) // 10] for i in range(10)]
            return self.stalled(handler, status, headers, part, 0, 0, record, pieces, self.faults.body_seconds / 10)
        self.send(handler, status, part, headers, record)

    @staticmethod
    def stalled(handler, status, headers, body, count, seconds, record, pieces=(), pause=0.0):
        """Sends the first `count` bytes of the body, waits `seconds`, then sends the rest, in `pieces`
        `pause` seconds apart when given."""
        import time

        record.status = status
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:count])
        handler.wfile.flush()
        time.sleep(seconds)
        for piece in pieces or [body[count:]]:
            handler.wfile.write(piece)
            handler.wfile.flush()
            time.sleep(pause)

    @staticmethod
    def trickled(handler, data, seconds, longest=30.0):
        """Sends `data` one byte every `seconds` (for `longest` seconds at most), until the client leaves."""
        import time

        handler.close_connection = True
        ends = time.monotonic() + longest
        for byte in data:
            if time.monotonic() > ends:
                break
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(seconds)

    def storage_requests(self):
        return [r for r in self.requests if r.host == "storage"]

    def api_requests(self):
        return [r for r in self.requests if r.host == "api"]
