"""The Cupix pointcloud listing as data: its items, their groups and subs, and what alignment needs.

The same shape is read from the REST API (`source.cupix`), from the cache manifest it writes, and from
a `metadata:` file given to `source.files`, so a downloaded capture can be re-aligned offline.
"""
import json
import re
from pathlib import Path

from pipeline.errors import SourceError


def listing_items(document):
    """The items of a listing: a full reply `{"result": {"data": [...]}}`, `{"data": [...]}` or a list."""
    if isinstance(document, dict) and "result" in document:
        document = document["result"]
    if isinstance(document, dict) and "data" in document:
        document = document["data"]
    if isinstance(document, dict) and "items" in document:
        document = document["items"]
    if not isinstance(document, list):
        raise ValueError("expected a Cupix pointcloud listing: {\"result\": {\"data\": [...]}} or a list of items")
    return document


def attributes(entry):
    """An item's attributes with its id as a string (the outer id is a string or an integer)."""
    attrs = dict(entry.get("attributes") or {}) if isinstance(entry, dict) else {}
    identifier = attrs.get("id", entry.get("id") if isinstance(entry, dict) else None)
    if identifier is None:
        raise ValueError(f"a listing item has no id: {str(entry)[:80]}")
    attrs["id"] = str(identifier)
    return attrs


def meta(attrs, part="prop"):
    """`meta.prop` (or another part of `meta`) of an item's attributes, {} when absent or not a mapping.

    >>> meta({"meta": {"prop": {"tm": [1]}}}), meta({"meta": "none"}), meta({"meta": {"prop": [1]}})
    ({'tm': [1]}, {}, {})
    """
    found = (attrs or {}).get("meta")
    found = found.get(part) if isinstance(found, dict) else None
    return found if isinstance(found, dict) else {}


def entry_id(entry):
    """The id of a listing entry, as text."""
    return attributes(entry)["id"]


def parent_id(attrs):
    parent = attrs.get("parent")
    if isinstance(parent, dict):
        parent = parent.get("id")
    return None if parent is None else str(parent)


class Listing:
    """Items keyed by id (duplicates across pages merged), with helpers to find groups and subs."""

    def __init__(self, entries=()):
        self.by_id = {}
        for entry in entries:
            attrs = attributes(entry)
            self.by_id.setdefault(attrs["id"], attrs)

    @staticmethod
    def from_file(path):
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
            return Listing(listing_items(document))
        except (OSError, ValueError) as error:
            raise SourceError(f"{path}: not a Cupix pointcloud listing: {error}") from error

    def subs(self):
        return [a for a in self.by_id.values() if a.get("kind") == "sub"]

    def group_of(self, sub):
        return self.by_id.get(parent_id(sub) or "")

    def find_groups(self, fetch, subs):
        """Fetches (with `fetch(id) -> entry`) the groups of `subs` that the listing lacks; returns the
        fetched entries."""
        fetched = []
        for sub in subs:
            group_id = parent_id(sub)
            if group_id and group_id not in self.by_id:
                entry = fetch(group_id)
                fetched.append(entry)
                self.by_id[group_id] = attributes(entry)
        return fetched

    def capture_of(self, attrs):
        for key in ("capture_id", "capture"):
            value = attrs.get(key)
            if isinstance(value, dict):
                value = value.get("id")
            if value is not None:
                return str(value)
        return None


def tokens(text):
    return set(re.split(r"[^0-9A-Za-z]+", text))


def match_file(listing, file_path):
    """The sub a local file holds: by name, by original file name, or by its id in the file name."""
    name, stem = Path(file_path).name, Path(file_path).stem
    found = []
    for sub in listing.subs():
        sub_name = str(sub.get("name") or "")
        original = str(meta(sub).get("original_file_name") or "")
        if name in (sub_name, original) or stem in (Path(sub_name).stem, Path(original).stem) \
                or sub["id"] in tokens(stem):
            found.append(sub)
    if len(found) != 1:
        which = "no sub" if not found else f"{len(found)} subs ({', '.join(s['id'] for s in found)})"
        raise SourceError(f"{file_path}: {which} of the metadata match this file by name, original file name or id")
    return found[0]
