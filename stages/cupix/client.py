"""A small client for the Cupix REST API: authenticated JSON requests, paging and retries.

The token goes only to the API host, as the X-CUPIX-AUTH header; it never appears in a message, a log
line or a request to the storage host (download links are followed by hand, see download.py).
"""
import logging
import random
import time
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urljoin, urlsplit

from pipeline.errors import SourceError
from pipeline.imports import require

log = logging.getLogger(__name__)

AUTH_HEADER = "X-CUPIX-AUTH"
POINTCLOUD_FIELDS = ("id,name,state,record,level,parent,kind,meta,cluster,capture,facility,pointcloud_type,"
                     "created_at,updated_at,mesh_uploaded_at,ply_uploaded_at")
FACILITY_FIELDS = "id,key,name,bearing,use_georeference,georeference"
RETRYABLE = {429, 500, 502, 503, 504}
PER_PAGE = 100
MAX_PAGES = 10_000


class CupixError(SourceError):
    """A Cupix request failed; `status` is the last HTTP status, if any."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class Retry(Exception):
    """Raised by one attempt of CupixClient.retried to ask for another; `last` is the response or the
    error that made it fail."""

    def __init__(self, last):
        super().__init__(last)
        self.last = last


class Stalled(Exception):
    """An attempt that took too long or went too slowly; its text says how, for messages."""


def failure(last):
    """How a failed attempt ended, for messages: its HTTP status, how it stalled, or the kind of error."""
    if isinstance(last, Stalled):
        return str(last)
    status = getattr(last, "status_code", None)
    return f"HTTP {status}" if status else type(last).__name__


def retry_after(response):
    """Seconds from a Retry-After header (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Backoff:
    """Exponential backoff with jitter, honouring Retry-After; `sleep` is injectable for tests."""

    def __init__(self, base=0.5, cap=30.0, sleep=time.sleep, rng=None):
        self.base, self.cap, self.sleep = base, cap, sleep
        self.rng = rng or random.Random()

    def wait(self, attempt, response=None):
        told = retry_after(response)
        delay = told if told is not None else min(self.cap, self.base * 2 ** attempt) * self.rng.uniform(0.5, 1.5)
        self.sleep(min(delay, self.cap * 4))


def link_problem(link):
    """Why a download link is not followed (its scheme is not http(s), or it has no host), or None. The
    link itself is never shown: its query string is a signature.

    >>> link_problem("https://bucket/5.las?sig=1"), link_problem("ftp://host/5.las"), link_problem("https:///5")
    (None, "its scheme is 'ftp', not http(s)", 'it has no host')
    """
    parts = urlsplit(link)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"its scheme is {scheme[:20]!r}, not http(s)"
    return None if parts.hostname else "it has no host"


def kind_of(value):
    """How a JSON value is described in messages: 'a list', 'a string', 'null', ..."""
    if value is None:
        return "null"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def mapping(document, key, where, client):
    """`document[key]`, which must be a mapping."""
    value = document.get(key)
    if not isinstance(value, dict):
        raise client.error(f"{where}: expected {key} to be a mapping, got {kind_of(value)}")
    return value


def item_id(item, where, client):
    """The id of a listing item (`attributes.id`, else its outer `id`), as text; an item without one, or
    of the wrong shape, is an error."""
    if not isinstance(item, dict):
        raise client.error(f"{where} is not a mapping ({kind_of(item)})")
    attributes = item.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise client.error(f"{where}'s attributes are not a mapping ({kind_of(attributes)})")
    identifier = (attributes or {}).get("id", item.get("id"))
    if isinstance(identifier, bool) or not isinstance(identifier, (int, str)) or not str(identifier).strip():
        raise client.error(f"{where} has no id")
    return str(identifier)


def page_number(pagination, key, where, client):
    """A page number of `pagination` (an integer, or its digits as text), or None."""
    value = pagination.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 and key != "total_pages" or value < 0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise client.error(f"{where}: {key} {shown} is not a page number")
    return value


class CupixClient:
    """`timeout` bounds an API request's whole time, from connecting to the last byte of the answer (a
    watchdog cuts the connection of one that takes longer, and it is retried); downloads use it as the
    longest wait for the storage's answer and then for each next byte (see download.py)."""

    def __init__(self, base_url, token, timeout=60.0, retries=5, backoff=None, session=None):
        requests = require("requests", "the Cupix API")
        from .watchdog import Watchdog

        self.requests = requests
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff()
        self.watchdog = Watchdog()
        self.session = session or self.new_session()
        self._token = token

    @staticmethod
    def new_session():
        """A requests session whose requests a watch can cut (see watchdog.py)."""
        from .watchdog import watched_session

        return watched_session()

    def __repr__(self):  # never show the token
        return f"CupixClient({self.base_url!r})"

    def mask(self, text):
        """`text` on one line with the token, as it is or URL-encoded, shown as ***."""
        text = " ".join(str(text).split())
        for form in {self._token, quote(self._token, safe="")}:
            if form:
                text = text.replace(form, "***")
        return text

    def error(self, message, status=None):
        """A CupixError whose one line never shows the token (a server may echo it)."""
        return CupixError(self.mask(message), status)

    def request(self, path, params=None, redirect_expected=False, what=None):
        """A GET to the API with the token; retried on 429, 5xx, connection errors and timeouts.

        Redirects are never followed, so the token cannot travel to another host; only the download
        endpoints may answer one (see download_location).
        """
        url = f"{self.base_url}{path}"
        what = what or f"GET {path}"

        def attempt():
            with self.watchdog.watch(self.timeout) as watch:
                try:
                    response = self.session.get(url, params=params, headers={AUTH_HEADER: self._token},
                                                timeout=self.timeout, allow_redirects=False)
                except (self.requests.ConnectionError, self.requests.Timeout,
                        self.requests.exceptions.ChunkedEncodingError) as error:
                    raise Retry(Stalled(f"timeout (no complete answer within {self.timeout:g} s)")
                                if watch.expired else error) from None
                except self.requests.RequestException as error:  # its text may hold the request's headers
                    raise self.error(f"{what}: the request could not be made ({type(error).__name__})") from None
            if watch.expired:  # an answer cut short may still look whole
                raise Retry(Stalled(f"timeout (no complete answer within {self.timeout:g} s)"))
            if response.status_code in RETRYABLE:
                raise Retry(response)
            if response.is_redirect and not redirect_expected:
                raise self.error(f"{what}: the API answered a redirect (HTTP {response.status_code}), which is not "
                                 "followed with the token; check base_url", response.status_code)
            self.raise_for_status(response, what)
            return response

        return self.retried(attempt, what)

    def retried(self, attempt, what):
        """What `attempt()` returns, calling it again, after a backoff, each time it raises Retry; after
        `retries` retries, a CupixError naming the last failure."""
        last = None
        for number in range(self.retries + 1):
            if number:
                self.backoff.wait(number - 1, last if isinstance(last, self.requests.Response) else None)
            try:
                return attempt()
            except Retry as retry:
                last = retry.last
            log.debug("%s: %s (attempt %d)", what, failure(last), number + 1)
        raise self.error(f"{what} failed after {self.retries + 1} attempts: last {failure(last)}",
                         getattr(last, "status_code", None))

    def raise_for_status(self, response, what):
        status = response.status_code
        if status in (401, 403):
            raise self.error(f"Cupix rejected the API token (HTTP {status} for {what}); check the token "
                             "(e.g. CUPIX_API_KEY)", status)
        if status == 404:
            raise self.error(f"{what}: not found (HTTP 404)", status)
        if status >= 400:
            reason = ""
            try:
                body = response.json().get("result") or {}
                reason = body.get("reason") or body.get("message") or ""
            except (ValueError, AttributeError):
                pass
            reason = str(reason)[:200]
            raise self.error(f"{what}: HTTP {status}{': ' + reason if reason else ''}", status)

    def get_json(self, path, params=None, what=None):
        response = self.request(path, params, what=what)
        try:
            return response.json()
        except ValueError as error:
            raise self.error(f"{what or 'GET ' + path}: the answer is not JSON") from error

    def paged(self, path, params, what=None):
        """Every item of a paged listing, following `next_page` until it is null (or the last page).

        A listing that would not end (a `next_page` already read, or a page adding no item not listed
        before while pointing to another) and an answer of the wrong shape are one-line errors."""
        what = what or f"GET {path}"
        page, read, seen = 1, set(), set()
        for _ in range(MAX_PAGES):
            read.add(page)
            reply = self.get_json(path, {**params, "page": page, "per_page": PER_PAGE}, what=what)
            here = f"{what}: page {page}"
            if not isinstance(reply, dict):
                raise self.error(f"{here}: expected a mapping, got {kind_of(reply)}")
            result = mapping(reply, "result", here, self)
            data = result.get("data")
            if not isinstance(data, list):
                raise self.error(f"{here}: expected result.data to be a list, got {kind_of(data)}")
            ids = {item_id(item, f"{here}: item {number}", self) for number, item in enumerate(data, 1)}
            new = ids - seen
            seen |= ids
            yield from data
            pagination = result.get("pagination")
            if pagination is None or not data:
                return
            if not isinstance(pagination, dict):
                raise self.error(f"{here}: expected result.pagination to be a mapping or null, got "
                                 f"{kind_of(pagination)}")
            current = page_number(pagination, "current_page", here, self) or page
            total = page_number(pagination, "total_pages", here, self)
            following = page_number(pagination, "next_page", here, self)
            if following is None or (total is not None and current >= total):
                return
            if following in read:
                raise self.error(f"{what}: next_page {following} repeats a page already read (page {page} gave it): "
                                 "the listing does not end")
            if not new:
                raise self.error(f"{what}: page {page} adds no new item (its {len(data)} were all listed before) and "
                                 f"points to page {following}: the listing does not end")
            page = following
        raise self.error(f"{what}: more than {MAX_PAGES} pages")

    def pointclouds(self, **filters):
        params = {"fields": POINTCLOUD_FIELDS, **{k: v for k, v in filters.items() if v is not None}}
        return list(self.paged("/pointclouds", params, what="GET /pointclouds"))

    def pointcloud(self, identifier):
        what = f"GET /pointclouds/{identifier}"
        reply = self.get_json(f"/pointclouds/{identifier}", {"fields": POINTCLOUD_FIELDS}, what=what)
        if not isinstance(reply, dict):
            raise self.error(f"{what}: expected a mapping, got {kind_of(reply)}")
        data = mapping(reply, "result", what, self).get("data")
        if not isinstance(data, dict):
            raise self.error(f"{what}: expected result.data to be one item (a mapping), got {kind_of(data)}")
        item_id(data, f"{what}: the item", self)
        return data

    def facility(self, key):
        """The attributes of a facility (project), by its key: `GET /facilities/{key}` with FACILITY_FIELDS."""
        path = f"/facilities/{quote(key, safe='')}"
        what = f"GET {path}"
        reply = self.get_json(path, {"fields": FACILITY_FIELDS}, what=what)
        data = mapping(reply, "result", what, self).get("data") if isinstance(reply, dict) else None
        if not isinstance(data, dict):
            raise self.error(f"{what}: expected result.data to be one facility (a mapping), got "
                             f"{kind_of(data if isinstance(reply, dict) else reply)}")
        attributes = data.get("attributes", {})
        if not isinstance(attributes, dict):
            raise self.error(f"{what}: the facility's attributes are not a mapping ({kind_of(attributes)})")
        return attributes

    def download_location(self, endpoint):
        """The storage URL that a download endpoint redirects to (the redirect is not followed). A relative
        `Location` is resolved against the API URL; a link that is then not http(s) is refused. The link
        is fetched without the token whatever its host (see download.py)."""
        what = f"GET {endpoint}"
        response = self.request(endpoint, redirect_expected=True, what=what)
        location = response.headers.get("Location") if response.is_redirect else None
        if not location:
            raise self.error(f"{what}: expected a redirect to the file, got HTTP {response.status_code}",
                             response.status_code)
        link = urljoin(f"{self.base_url}{endpoint}", location.strip())
        problem = link_problem(link)
        if problem:
            raise self.error(f"{what}: the download link is refused: {problem}")
        return link

    def listing(self, path, params, what=None):
        return list(self.paged(path, params, what=what))
