"""source.cupix against a loopback stand-in: real sockets, real redirects, real faults."""
import json
import math
import os
import subprocess
import sys

import laspy
import numpy as np
import pytest

from tests.conftest import make_las, write_config
from tests.cupix_stand_in import CupixStandIn, Faults
from tests.plyfile_plain import read_plain_ply
from tests.stages.test_matrix import rigid

TOKEN = "s3cret-T0KEN-value"
GROUP = rigid(math.radians(30), 0, 0, (500_000.0, 4_000_000.0, 50.0))
SUBS = {"5311": rigid(0.0, 0, 0, (-6, -4, 1.5)), "5312": rigid(math.radians(90), 0, 0, (5, -3, 1.5)),
        "5313": rigid(math.radians(-135), 0, 0, (0, 6, 1.5))}
SITE = np.round(np.random.default_rng(3).uniform([-10, -8, 0], [10, 8, 3], (2000, 3)), 3)


def flat(matrix):
    return [float(v) for v in matrix.reshape(-1)]


def entry(identifier, name, kind, parent, prop, outer_int=False, **extra):
    attributes = {"id": int(identifier), "name": name, "kind": kind, "state": "done", "parent": {"id": parent},
                  "pointcloud_type": "uploaded", "capture": {"id": 1234}, "updated_at": "2026-11-01T10:00:00Z",
                  "ply_uploaded_at": None, "meta": {"prop": prop, "potree": {}}, **extra}
    return {"id": int(identifier) if outer_int else str(identifier), "type": "pointcloud", "attributes": attributes}


def local_points(sub_id):
    inverse = np.linalg.inv(SUBS[sub_id])
    return SITE @ inverse[:3, :3].T + inverse[:3, 3]


def world_points():
    return SITE @ GROUP[:3, :3].T + GROUP[:3, 3]


def ply_bytes(xyz):
    records = np.zeros(len(xyz), [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1")])
    records["x"], records["y"], records["z"] = xyz.T
    records["red"] = 200
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\nproperty double x\n"
              "property double y\nproperty double z\nproperty uchar red\nend_header\n")
    return header.encode() + records.tobytes()


@pytest.fixture
def capture(tmp_path):
    """The listing (subs first, the group on the last page, ids as strings and integers) and the files."""
    las_path = make_las(tmp_path / "served.las", local_points("5311"), scale=0.0001, offset=(0, 0, 0))
    files = {"5311": ("scan one.las", las_path.read_bytes()), "5312": ("5312_pointcloud.ply", ply_bytes(local_points("5312"))),
             "5313": ("scan three.las", make_las(tmp_path / "served3.las", local_points("5313"), scale=0.0001,
                                                 offset=(0, 0, 0)).read_bytes())}
    las_path.unlink()
    (tmp_path / "served3.las").unlink()
    items = [
        entry("5311", "scan one.las", "sub", 5310, {"tm": flat(SUBS["5311"]), "wtm": flat(GROUP @ SUBS["5311"]),
                                                    "original_file_name": "scan one.las"}, outer_int=True),
        entry("5312", "reconstruction", "sub", 5310, {"tm": flat(SUBS["5312"]), "wtm": flat(GROUP @ SUBS["5312"])},
              pointcloud_type="3d_reconstructed", ply_uploaded_at="2026-11-01T11:00:00Z"),
        entry("5314", "still processing.las", "sub", 5310, {"tm": flat(np.eye(4))}, state="processing"),
        entry("5313", "scan three.las", "sub", 5310, {"tm": flat(SUBS["5313"]), "wtm": flat(GROUP @ SUBS["5313"])}),
        entry("5310", "cluster 1", "group", None, {"tm": flat(GROUP), "wtm": flat(GROUP), "scale": [1, 1, 1]}),
    ]
    return items, files


def config(folder, stand_in, sinks="  - type: sink.las\n    path: out/{sub}.las\n", extra=""):
    return write_config(folder, f"""
version: 1
stages:
  - type: source.cupix
    tag: cupix
    base_url: {stand_in.base_url}
    token: ${{CUPIX_API_KEY}}
    capture_id: 1234
    download_dir: cache
    retries: 4
    backoff: 0.01
    timeout: 10
{extra}  - type: transform.align
    check_world: error
{sinks}""")


def pipeline(*args, token=TOKEN, timeout=120):
    env = {**os.environ, "CUPIX_API_KEY": token}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_clean(stand_in, tmp_path, files):
    """Downloads are byte-identical, stay inside the cache, and storage never saw the token."""
    for request in stand_in.storage_requests():
        assert "x-cupix-auth" not in request.headers and TOKEN not in json.dumps(request.query)
    for request in stand_in.api_requests():
        if request.status != 401:
            assert request.headers["x-cupix-auth"] == TOKEN
    manifest = json.loads((tmp_path / "cache/manifest.json").read_text())
    for sub_id, record in manifest["files"].items():
        assert (tmp_path / "cache" / record["file"]).read_bytes() == files[sub_id][1]
        assert "?" not in record["url_path"] and "Signature" not in json.dumps(record)
    outside = [f for f in files_under(tmp_path) if not f.startswith(("cache/", "out/", "config.yaml", "run.json"))]
    assert outside == []


def test_end_to_end_run_aligns_every_sub(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("run", config(tmp_path, stand_in), "--report", tmp_path / "run.json")
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stderr + done.stdout + (tmp_path / "run.json").read_text()
    assert "skipping pointcloud 5314 (still processing.las): state processing" in done.stderr
    assert "skipping pointcloud 5310 (cluster 1): a group, it has no file" in done.stderr
    assert files_under(tmp_path / "out") == ["5311.las", "5312.las", "5313.las"]
    for sub_id in SUBS:
        written = laspy.read(tmp_path / f"out/{sub_id}.las")
        got = np.stack([written.x, written.y, written.z], axis=1)
        assert np.abs(got - world_points()).max() < 0.001, sub_id
    assert_clean(stand_in, tmp_path, files)
    downloads = [r.path for r in stand_in.api_requests() if r.path.endswith("download")]
    assert sorted(downloads) == ["/api/v1/pointclouds/5311/download", "/api/v1/pointclouds/5312/resources/ply/download",
                                 "/api/v1/pointclouds/5313/download"]
    listing = [r for r in stand_in.api_requests() if r.path == "/api/v1/pointclouds"]
    assert [r.query["page"] for r in listing] == [["1"], ["2"], ["3"]]
    assert listing[0].query["fields"][0].split(",")[:3] == ["id", "name", "state"]
    assert {"meta", "kind", "parent", "state", "pointcloud_type", "updated_at", "ply_uploaded_at"} <= \
        set(listing[0].query["fields"][0].split(","))
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["stages"][0]["options"]["token"] == "***"
    source_step, align_step = report["items"][0]["applied"]
    assert source_step == {"stage": "stages[0] (source.cupix, tag cupix)", "facility": None}  # the listing names none
    assert align_step["alignment"]["group"] == "5310"


@pytest.mark.parametrize("faults", [
    Faults(range_support=True, drop_after={"5311": 5000}),
    Faults(range_support=False, drop_after={"5311": 5000}),
    Faults(short_body={"5313": 1234}),
    Faults(storage_503=3, api_503=2, api_429=1),
    Faults(expire_first_links=2),
], ids=["dropped-with-range", "dropped-without-range", "short-body", "503-bursts", "expired-links"])
def test_faults_end_with_identical_files(tmp_path, capture, faults):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=faults) as stand_in:
        done = pipeline("run", "-q", config(tmp_path, stand_in))
    assert done.returncode == 0, done.stderr
    assert_clean(stand_in, tmp_path, files)
    ranges = [r.headers.get("range") for r in stand_in.storage_requests() if r.path.startswith("/bucket/5311/")]
    if faults.drop_after:
        assert ranges == [None, "bytes=5000-"]  # resumed where the connection dropped
        statuses = [r.status for r in stand_in.storage_requests() if r.path.startswith("/bucket/5311/")]
        assert statuses == [200, 206 if faults.range_support else 200]
    if faults.expire_first_links:
        assert [r.status for r in stand_in.storage_requests()].count(403) == 2


@pytest.mark.parametrize("disposition, expected", [
    ('attachment; filename="../../etc/passwd"', "5311_etc_passwd"),
    ('attachment; filename="/etc/shadow"', "5311_etc_shadow"),
    ("attachment; filename*=UTF-8''%2E%2E%2Fscan%20%C3%A9t%C3%A9.las", "5311_scan été.las"),
    (None, "5311_scan one.las"),
])
def test_hostile_file_names_stay_in_the_cache(tmp_path, capture, disposition, expected):
    items, files = capture
    faults = Faults(disposition={"5311": disposition} if disposition else {})
    with CupixStandIn(items, files, token=TOKEN, faults=faults) as stand_in:
        done = pipeline("run", "-q", config(tmp_path, stand_in))
    assert done.returncode == 0, done.stderr
    assert expected in os.listdir(tmp_path / "cache")
    assert_clean(stand_in, tmp_path, files)


def test_cache_reuses_unchanged_subs_and_refresh_ignores_it(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        assert pipeline("run", "-q", config(tmp_path, stand_in)).returncode == 0
        first = len(stand_in.storage_requests())
        assert pipeline("run", "-q", config(tmp_path, stand_in)).returncode == 0
        assert len(stand_in.storage_requests()) == first  # nothing fetched again
        items[0]["attributes"]["updated_at"] = "2026-11-02T09:00:00Z"  # sub 5311 changed on the server
        assert pipeline("run", "-q", config(tmp_path, stand_in)).returncode == 0
        assert len(stand_in.storage_requests()) == first + 1
        assert pipeline("run", "-q", "--refresh", config(tmp_path, stand_in)).returncode == 0
        assert len(stand_in.storage_requests()) == first + 1 + 3
    manifest = json.loads((tmp_path / "cache/manifest.json").read_text())
    assert manifest["files"]["5311"]["updated_at"] == "2026-11-02T09:00:00Z"
    assert set(manifest["files"]["5311"]) == {"id", "updated_at", "size", "sha256", "url_path", "file", "endpoint",
                                              "downloaded_at"}
    ids = sorted(str(e["attributes"]["id"]) for e in manifest["data"])
    assert ids == ["5310", "5311", "5312", "5313"]


def test_cache_manifest_realigns_offline(tmp_path, capture, registry):
    """The manifest is a listing: source.files + metadata re-aligns the cached files without the API."""
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        assert pipeline("run", "-q", config(tmp_path, stand_in)).returncode == 0
    offline = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: ["cache/53*"]
            metadata: cache/manifest.json
          - type: transform.align
          - type: sink.ply
            path: offline/{sub}.ply
    """, name="offline.yaml")
    done = pipeline("run", "-q", offline)
    assert done.returncode == 0, done.stderr
    for sub_id in SUBS:
        ply = read_plain_ply(tmp_path / f"offline/{sub_id}.ply")
        assert np.abs(np.stack([ply["x"], ply["y"], ply["z"]], axis=1) - world_points()).max() < 0.001


def test_dry_run_lists_subs_without_downloading(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("run", "--dry-run", config(tmp_path, stand_in))
    assert done.returncode == 0, done.stderr
    assert stand_in.storage_requests() == []
    lines = done.stdout.splitlines()
    assert lines[0] == "3 item(s)"
    assert lines[1] == "[0] scan one.las (id 5311) from cupix pointcloud 5311 (uploaded) via /pointclouds/5311/download"
    assert lines[3] == ("[1] reconstruction (id 5312) from cupix pointcloud 5312 (3d_reconstructed) via "
                        "/pointclouds/5312/resources/ply/download")
    assert not (tmp_path / "cache").exists() or files_under(tmp_path / "cache") == []


def test_a_rejected_token_is_one_line_without_the_token(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("run", config(tmp_path, stand_in), token="wrong-token-value")
        assert len(stand_in.api_requests()) == 1  # not retried
    assert done.returncode == 1
    assert done.stderr == ("error: Cupix rejected the API token (HTTP 401 for GET /pointclouds); check the token "
                           "(e.g. CUPIX_API_KEY)\n")


def test_storage_that_keeps_failing_gives_up_naming_the_sub(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(storage_503=1000)) as stand_in:
        done = pipeline("run", config(tmp_path, stand_in))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == ("error: pointcloud 5311 (scan one.las): storage download from "
                                            "/pointclouds/5311/download failed after 5 attempts: last HTTP 503")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []
    assert [f for f in files_under(tmp_path / "cache") if f.endswith(".part")] == []


def test_a_reconstruction_without_ply_is_refused_naming_it(tmp_path, capture):
    items, files = capture
    items[1]["attributes"]["ply_uploaded_at"] = None
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("run", config(tmp_path, stand_in))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "error: pointcloud 5312 (reconstruction) is a 3D reconstruction without a PLY resource (ply_uploaded_at is "
        "empty): its .cpc file is a proprietary format this tool cannot read")


def test_a_missing_group_is_fetched_and_a_lost_one_named(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("run", "-q", config(tmp_path, stand_in, extra="    names: ['scan one.las']\n")
                        .parent / "config.yaml")
    assert done.returncode == 0, done.stderr
    # the group is listed; now list by ids only, so it must be fetched on its own
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        body = config(tmp_path, stand_in).read_text().replace("    capture_id: 1234\n", "    ids: [5311]\n")
        (tmp_path / "config.yaml").write_text(body)
        done = pipeline("run", "-q", tmp_path / "config.yaml")
        fetched = [r.path for r in stand_in.api_requests() if r.path.startswith("/api/v1/pointclouds/53")]
    assert done.returncode == 0, done.stderr
    assert fetched[:2] == ["/api/v1/pointclouds/5311", "/api/v1/pointclouds/5310"]
    lost = [i for i in items if i["attributes"]["id"] != 5310]
    with CupixStandIn(lost, files, token=TOKEN) as stand_in:
        done = pipeline("run", config(tmp_path, stand_in))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == ("error: pointcloud 5311: its group 5310 cannot be fetched: GET "
                                            "/pointclouds/5310: not found (HTTP 404)")


def test_parallel_jobs_download_and_align(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("run", "-q", "--jobs", "2", config(tmp_path, stand_in))
    assert done.returncode == 0, done.stderr
    for sub_id in SUBS:
        written = laspy.read(tmp_path / f"out/{sub_id}.las")
        assert np.abs(np.stack([written.x, written.y, written.z], axis=1) - world_points()).max() < 0.001
    assert_clean(stand_in, tmp_path, files)


def test_ls_and_inspect(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        ls = pipeline("cupix", "ls", "--base-url", stand_in.base_url, "--capture", "1234")
        listed = pipeline("cupix", "ls", "--base-url", stand_in.base_url, "--capture", "1234", "--json")
        inspect = pipeline("cupix", "inspect", "--base-url", stand_in.base_url, "--capture", "1234")
        inspected = pipeline("cupix", "inspect", "--base-url", stand_in.base_url, "--capture", "1234", "--json")
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout.splitlines()[0].split() == ["ID", "KIND", "PARENT", "STATE", "TYPE", "POINTS", "NAME"]
    assert ls.stdout.splitlines()[1].split() == ["5311", "sub", "5310", "done", "uploaded", "scan", "one.las"]
    assert [r["id"] for r in json.loads(listed.stdout)] == ["5311", "5312", "5314", "5313", "5310"]
    assert inspect.returncode == 0, inspect.stderr
    rows = json.loads(inspected.stdout)
    subs = {r["id"]: r for r in rows if r["kind"] == "sub"}
    assert subs["5312"]["rotation_deg"] == "120.000"  # the group's 30° and the sub's 90°
    assert subs["5311"]["layout"] == "row_major (detected)" and subs["5311"]["check_world"] == "ok"
    translation = GROUP @ SUBS["5311"]
    assert subs["5311"]["translation"] == " ".join(f"{v:.3f}" for v in translation[:3, 3])
    assert "5313" in inspect.stdout and TOKEN not in inspect.stdout + inspect.stderr


def test_downloads_run_at_most_concurrency_at_once(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(storage_delay=0.3)) as stand_in:
        body = config(tmp_path, stand_in).read_text().replace("    retries: 4\n", "    retries: 4\n    concurrency: 2\n")
        (tmp_path / "config.yaml").write_text(body)
        done = pipeline("run", "-q", tmp_path / "config.yaml")
        most = stand_in.storage_most_active
    assert done.returncode == 0, done.stderr
    assert most == 2  # three files, two at a time


def test_inspect_reports_a_bad_matrix_and_exits_1(tmp_path, capture):
    items, files = capture
    items[3]["attributes"]["meta"]["prop"]["tm"] = [1, 0, 0, 5, 0, 1, 0, 0, 0, 0, 1, 0, 5, 0, 0, 1]  # sub 5313
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        done = pipeline("cupix", "inspect", "--base-url", stand_in.base_url, "--capture", "1234", "--json")
    assert done.returncode == 1
    rows = {r["id"]: r for r in json.loads(done.stdout)}
    assert rows["5313"]["problem"].startswith("pointcloud 5313 (sub) meta.prop.tm is not an affine matrix")
    assert rows["5311"]["check_world"] == "ok" and rows["5311"]["problem"] is None


def test_ctrl_c_during_downloads_stops_at_once(tmp_path, capture):
    import signal
    import time

    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(storage_delay=8)) as stand_in:
        env = {**os.environ, "CUPIX_API_KEY": TOKEN}
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-q", str(config(tmp_path, stand_in))],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 30
        while not stand_in.storage_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        waited = time.monotonic() - interrupted
    assert process.returncode == 130, stderr
    assert waited < 4  # not the 8 s the storage takes to answer
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_a_downloaded_item_is_processed_while_others_still_download(tmp_path, capture):
    items, files = capture

    def order(slow_sub):
        with CupixStandIn(items, files, token=TOKEN, faults=Faults(slow={slow_sub: 2.0})) as stand_in:
            done = pipeline("run", "-v", "--refresh", config(tmp_path, stand_in))
        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        first_read = next(i for i, line in enumerate(lines) if "item 0: reading scan one.las" in line)
        last_download = next(i for i, line in enumerate(lines) if "pointcloud 5313: downloaded" in line)
        return first_read, last_download

    first_read, last_download = order("5313")
    assert first_read < last_download  # the first item is processed while the last one still downloads
    first_read, last_download = order("5311")
    assert last_download < first_read  # and the others download while the first one is slow
