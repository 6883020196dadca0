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


def cached_once(stand_in, folder):
    """Downloads sub 5 once, so the manifest holds its record; returns (record, file path)."""
    path = fetch(stand_in, folder, "5")
    return json.loads((folder / "manifest.json").read_text())["files"]["5"], path


def rewrite(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["5"].update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def five():
    files = {"5": ("scan.las", b"LASF five" * 1000)}
    with CupixStandIn([sub("5")], files, token=TOKEN) as stand_in:
        yield stand_in, files["5"][1]


def test_an_unchanged_sub_is_read_from_the_cache(tmp_path, five):
    stand_in, data = five
    cache = tmp_path / "cache"
    _, path = cached_once(stand_in, cache)
    assert fetch(stand_in, cache, "5") == path and len(stand_in.storage_requests()) == 1


def test_a_manifest_naming_a_file_outside_the_cache_never_deletes_it(tmp_path, five, caplog):
    stand_in, data = five
    cache = tmp_path / "cache"
    record, path = cached_once(stand_in, cache)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    rewrite(cache, file="../victim.txt", size=len(b"precious"))
    with caplog.at_level(logging.WARNING, logger="stages.cupix.download"):
        got = fetch(stand_in, cache, "5")
    assert victim.read_bytes() == b"precious"
    assert got == path and got.read_bytes() == data and len(stand_in.storage_requests()) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "pointcloud 5: the cache manifest names '../victim.txt', which is not a file of download_dir: ignored, "
        "downloading it again"]
    assert json.loads((cache / "manifest.json").read_text())["files"]["5"]["file"] == path.name


@pytest.mark.parametrize("change", ["absolute", "symlink-out", "sha256", "size", "not-a-string", "hidden", "manifest"])
def test_a_manifest_entry_that_does_not_hold_the_sub_is_fetched_again(tmp_path, five, caplog, change):
    stand_in, data = five
    cache = tmp_path / "cache"
    record, path = cached_once(stand_in, cache)
    other = tmp_path / "other sub.las"  # another sub's data, of the same size
    other.write_bytes(b"X" * len(data))
    if change == "absolute":
        rewrite(cache, file=str(other))
    elif change == "symlink-out":
        path.unlink()
        path.symlink_to(other)
        rewrite(cache, sha256=__import__("hashlib").sha256(other.read_bytes()).hexdigest())
    elif change == "sha256":
        path.write_bytes(b"Y" * len(data))  # same size, other bytes
    elif change == "size":
        path.write_bytes(data[:-1])
    elif change == "not-a-string":
        rewrite(cache, file=["5_scan.las"])
    elif change == "hidden":
        (cache / ".5_scan.las").write_bytes(data)
        rewrite(cache, file=".5_scan.las")
    elif change == "manifest":
        rewrite(cache, file="manifest.json")
    with caplog.at_level(logging.WARNING, logger="stages.cupix.download"):
        got = fetch(stand_in, cache, "5")
    assert got.read_bytes() == data and got.parent == cache and not got.is_symlink()
    assert len(stand_in.storage_requests()) == 2
    assert other.read_bytes() == b"X" * len(data)
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("pointcloud 5: ")
    assert json.loads((cache / "manifest.json").read_text())["files"]["5"]["file"] == path.name


@pytest.mark.parametrize("manifest", ['{"files": [1, 2], "data": "x"}', '{"files": {"5": "x"}, "data": [1]}',
                                      '[1]', '{"files": {"5": {"file": "5_scan.las", "size": "9000"}}}'])
def test_a_manifest_of_the_wrong_shape_is_not_trusted(tmp_path, five, manifest):
    stand_in, data = five
    tmp_path.joinpath("5_scan.las").write_bytes(data)
    tmp_path.joinpath("manifest.json").write_text(manifest)
    assert fetch(stand_in, tmp_path, "5").read_bytes() == data
    assert len(stand_in.storage_requests()) == 1
    assert json.loads((tmp_path / "manifest.json").read_text())["files"]["5"]["file"] == "5_scan.las"


def test_two_runs_with_refresh_share_a_download_dir(tmp_path, capture):
    import subprocess
    import sys

    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(body_seconds=1.0)) as stand_in:
        path = config(tmp_path, stand_in)
        for number in (1, 2):  # two configs, same download_dir, own outputs
            body = path.read_text().replace("download_dir: cache", f"download_dir: {tmp_path / 'cache'}")
            (tmp_path / f"run{number}").mkdir()
            (tmp_path / f"run{number}/config.yaml").write_text(body)
        env = {**os.environ, "CUPIX_API_KEY": TOKEN}
        runs = [subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-q", "--refresh",
                                  str(tmp_path / f"run{number}/config.yaml")], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for number in (1, 2)]
        done = [run.communicate(timeout=60) for run in runs]
        downloads = len(stand_in.storage_requests())
    for run, (_, stderr) in zip(runs, done):
        assert run.returncode == 0, stderr
    manifest = json.loads((tmp_path / "cache/manifest.json").read_text())
    assert sorted(manifest["files"]) == ["5311", "5312", "5313"]
    for sub_id, record in manifest["files"].items():
        assert (tmp_path / "cache" / record["file"]).read_bytes() == files[sub_id][1]
    assert files_under(tmp_path / "cache") == [".manifest.lock", "5311_scan one.las", "5312_5312_pointcloud.ply",
                                               "5313_scan three.las", "manifest.json"]
    assert 3 <= downloads <= 6
    for number in (1, 2):
        assert files_under(tmp_path / f"run{number}/out") == ["5311.las", "5312.las", "5313.las"]


def test_a_run_waits_for_another_downloading_the_same_sub_and_takes_its_file(tmp_path):
    import threading
    import time

    files = {"5": ("scan.las", b"LASF five" * 1000)}
    with CupixStandIn([sub("5")], files, token=TOKEN, faults=Faults(storage_delay=0.5)) as stand_in:
        since = time.time()  # both runs started before either downloaded: with --refresh, either's file is fresh
        got = {}

        def run(name):
            got[name] = fetch(stand_in, tmp_path, "5", refresh=True, since=since)

        threads = [threading.Thread(target=run, args=(name,)) for name in "ab"]
        for thread in threads:
            thread.start()
            time.sleep(0.1)
        for thread in threads:
            thread.join(10)
        assert got["a"] == got["b"] and got["a"].read_bytes() == files["5"][1]
        assert len(stand_in.storage_requests()) == 1
        fetch(stand_in, tmp_path, "5", refresh=True, since=time.time())  # a later run with --refresh fetches again
        assert len(stand_in.storage_requests()) == 2
    assert sorted(os.listdir(tmp_path)) == [".manifest.lock", "5_scan.las", "manifest.json"]


def start_and_kill(tmp_path, stand_in, signal_number, extra=""):
    """Starts a run, kills it once sub 5311's partial file holds 20,000 bytes; returns that file's path."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "CUPIX_API_KEY": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-q", str(config(tmp_path, stand_in, extra=extra))],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = tmp_path / "cache/.5311.download.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size >= 20000) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal_number)
    process.communicate(timeout=20)
    return part


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_killed_run_leaves_a_part_that_the_next_run_resumes(tmp_path, capture, signal_name):
    import signal

    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(stall={"5311": (20000, 30)})) as stand_in:
        part = start_and_kill(tmp_path, stand_in, getattr(signal, signal_name))
        left = part.exists()
        if signal_name == "SIGKILL":
            assert left and part.stat().st_size == 20000
        done = pipeline("run", "-q", config(tmp_path, stand_in))
        ranges = [r.headers.get("range") for r in stand_in.storage_requests() if r.path.startswith("/bucket/5311/")]
    assert done.returncode == 0, done.stderr
    assert ranges == [None, "bytes=20000-" if left else None]
    assert (tmp_path / "cache/5311_scan one.las").read_bytes() == files["5311"][1]
    assert [f for f in files_under(tmp_path / "cache") if f.endswith((".part", ".download.lock"))] == []


def test_a_killed_runs_part_is_removed_when_its_sub_is_not_fetched_again(tmp_path, capture):
    import signal

    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(stall={"5311": (20000, 30)})) as stand_in:
        part = start_and_kill(tmp_path, stand_in, signal.SIGKILL)
        assert part.exists()
        done = pipeline("run", "-q", config(tmp_path, stand_in, extra="    names: ['scan three.las']\n"))
    assert done.returncode == 0, done.stderr
    assert [f for f in files_under(tmp_path / "cache") if f.endswith((".part", ".download.lock"))] == []


def test_a_part_of_another_version_is_not_resumed(tmp_path, capture):
    import signal

    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(stall={"5311": (20000, 30)})) as stand_in:
        start_and_kill(tmp_path, stand_in, signal.SIGKILL)
        items[0]["attributes"]["updated_at"] = "2026-11-02T09:00:00Z"  # changed on the server meanwhile
        done = pipeline("run", "-q", config(tmp_path, stand_in))
        ranges = [r.headers.get("range") for r in stand_in.storage_requests() if r.path.startswith("/bucket/5311/")]
    assert done.returncode == 0, done.stderr
    assert ranges == [None, None]
    assert (tmp_path / "cache/5311_scan one.las").read_bytes() == files["5311"][1]
    assert [f for f in files_under(tmp_path / "cache") if f.endswith((".part", ".download.lock"))] == []
