"""The download folder of source.cupix: what its manifest may name, names that stay apart, runs that
share the folder, and partial files that a killed run leaves behind."""
import json
import logging
import os

import pytest

from stages.cupix.client import Backoff, CupixClient
from stages.cupix.download import Cache, Downloader
from tests.cupix_stand_in import CupixStandIn, Faults
from tests.stages.test_cupix_loopback import TOKEN, capture, config, files_under, pipeline  # noqa: F401 (fixture)


def sub(identifier, name="scan.las", updated_at="2026-11-01T10:00:00Z"):
    return {"id": identifier, "type": "pointcloud",
            "attributes": {"id": identifier, "name": name, "kind": "sub", "state": "done", "parent": {"id": 1},
                           "pointcloud_type": "uploaded", "updated_at": updated_at, "meta": {"prop": {}}}}


def downloader(stand_in, folder, **options):
    client = CupixClient(stand_in.base_url, TOKEN, timeout=5, retries=2, backoff=Backoff(base=0.01))
    return Downloader(client, Cache(folder), **options)


def fetch(stand_in, folder, identifier, **options):
    attributes = stand_in.find(identifier)["attributes"]
    return downloader(stand_in, folder, **options).fetch(attributes, f"/pointclouds/{identifier}/download", [])


def test_ids_that_sanitise_alike_keep_their_own_files(tmp_path):
    files = {"77": ("scan.las", b"seventy-seven" * 100), "77.": ("scan.las", b"seventy-seven dot" * 100),
             "77_": ("scan.las", b"seventy-seven underscore" * 100)}
    with CupixStandIn([sub(i) for i in files], files, token=TOKEN) as stand_in:
        paths = {i: fetch(stand_in, tmp_path, i) for i in files}
    assert len(set(paths.values())) == 3
    assert paths["77"].name == "77_scan.las"  # a plain id keeps the plain name
    for identifier, path in paths.items():
        assert path.read_bytes() == files[identifier][1], identifier
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {i: manifest["files"][i]["file"] for i in files} == {i: p.name for i, p in paths.items()}
    assert [name for name in os.listdir(tmp_path) if name.endswith(".part")] == []
