"""Caches on object storage (issue 20): `lad assign`, `cache info|verify` and `student-train`
on s3:// stores, against a real S3 API server (moto's, started here on the loopback address,
with IAM checks on: wrong credentials are refused as on AWS). Same digests as a local store,
under torchrun too; kills, corruption, unreachable stores, --overwrite and one writer at a time."""
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

import boto3
import obstore
import pytest
import torch

from lad_cli.distill.cache.store import AssignmentCache, anchor_counts
from lad_cli.model.anchors import AnchorLayout
from lad_cli.distill.cache.url_claim import Lock
from lad_cli.distill.cache.remote import object_store, request_failure
from tests.conftest import TINY, assign_args, error_line, invoke
from tests.test_faults import PACED_ASSIGN, assert_entry_10_named_corrupt, run_and_kill

BUCKET = "lad-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server in a process of its own, IAM checks on after the 3 requests that make a
    user allowed s3:* and its key; the AWS_* variables point this process and its children at
    it. Yields a boto3 client of the bucket's owner."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:  # a TCP connection, not a request: requests count towards the 3 unchecked ones
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the moto server did not start"
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="lad")
    iam.put_user_policy(UserName="lad", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="lad")["AccessKey"]
    env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    server.terminate()
    server.wait(timeout=10)


def url(tmp_path, name="c.zarr") -> str:
    """A store URL of its own per test (the test's temp folder name is unique)."""
    return f"s3://{BUCKET}/{tmp_path.name}/{name}"


def info(path) -> dict:
    result = invoke("cache", "info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


@pytest.fixture(scope="module", autouse=True)
def one_thread(teacher):
    """Every store here computed with one thread per process, as under torchrun below (this
    teacher's PAA assignment differs in a few entries between 1 and 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local(teacher, synth_data, tmp_path_factory):
    """The same store on disk: the reference of every digest here."""
    path = tmp_path_factory.mktemp("s3_local") / "local.zarr"
    result = invoke(*assign_args(teacher, synth_data, path))
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def remote(s3, teacher, synth_data, local):
    """The store written to the bucket by one process."""
    cache = f"s3://{BUCKET}/shared/c.zarr"
    result = invoke(*assign_args(teacher, synth_data, cache))
    assert result.exit_code == 0, result.output
    return cache


def test_assign_to_s3_equals_a_local_store(s3, remote, local, synth_data, tmp_path, monkeypatch):
    meta, reference = info(remote), info(local)
    assert meta["digest"] == reference["digest"] and meta["complete"] and meta["path"] == remote
    assert (meta["files"], meta["bytes_on_disk"]) == (reference["files"], reference["bytes_on_disk"])
    assert len(keys(s3, "shared/c.zarr/")) == meta["files"]  # no lock, marker or partial left
    assert keys(s3, "shared/.c.zarr") == []
    result = invoke("cache", "verify", remote, "--data", synth_data)
    assert result.exit_code == 0 and "ok: 24 entries" in result.stdout, result.output
    # The URL is never a local path: nothing named s3: appears in the working folder.
    monkeypatch.chdir(tmp_path)
    assert invoke("cache", "info", remote, "--json").exit_code == 0 and list(tmp_path.iterdir()) == []


def test_two_processes_under_torchrun_write_the_same_store(s3, teacher, synth_data, local, tmp_path):
    cache = url(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lad_cli",
           *map(str, assign_args(teacher, synth_data, cache))]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["processes"], summary["computed"], summary["done"]) == (2, 24, 24)
    assert info(cache)["digest"] == info(local)["digest"]


def test_killed_assign_leaves_only_whole_shards_and_resumes(s3, teacher, synth_data, local, tmp_path):
    cache = url(tmp_path)
    args = [*assign_args(teacher, synth_data, cache), "--resume"]
    lines = run_and_kill(PACED_ASSIGN, args, "wrote shard ", random.Random(7).uniform(0.0, 0.3), tmp_path / "kill.log")
    written = [int(line.split()[-1]) for line in lines if line.startswith("wrote shard ")]
    store = AssignmentCache.open(cache)
    done = store.done().nonzero()[0].tolist()
    assert written and {2 * s for s in written} <= set(done) and len(done) < 24
    counts = anchor_counts(store.padded_hw(), AnchorLayout.from_dict(store.provenance.anchor_layout))
    for e in done:  # every entry marked done reads back whole (checksum-verified)
        assert store.read(e, int(counts[e])).shape == (counts[e],)
    assert keys(s3, f"{tmp_path.name}/.c.zarr.lock")  # the killed process's lock is still there...
    result = invoke(*args)  # ...and taken over: its holder is gone
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 24 - len(done)
    assert info(cache)["digest"] == info(local)["digest"] and keys(s3, f"{tmp_path.name}/.c.zarr") == []


def test_a_corrupted_object_is_refused_naming_the_entry(s3, remote, synth_data, tmp_path):
    cache = url(tmp_path)
    for key in keys(s3, "shared/c.zarr/"):
        s3.copy_object(Bucket=BUCKET, Key=key.replace("shared/", f"{tmp_path.name}/", 1),
                       CopySource={"Bucket": BUCKET, "Key": key})
    image_id = AssignmentCache.open(cache).image_ids()[5]
    shard = f"{tmp_path.name}/c.zarr/matched/c/5/0"  # image 5's two entries
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=shard)["Body"].read())
    index = data[-(2 * 16 + 4):]  # zarr's shard index: (offset, nbytes) per chunk, then a crc32c
    for chunk in range(2):  # one byte flipped in the middle of each entry's chunk
        offset, nbytes = struct.unpack_from("<QQ", index, 16 * chunk)
        data[offset + nbytes // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=shard, Body=bytes(data))
    assert_entry_10_named_corrupt(cache, synth_data, tmp_path / "student", image_id)


@pytest.mark.parametrize("case, variable, value, message", [
    ("missing bucket", None, None, "no such bucket"),
    ("wrong credentials", "AWS_SECRET_ACCESS_KEY", "wrong", "access denied: check the credentials"),
    ("unreachable endpoint", "AWS_ENDPOINT_URL", "closed port", "cannot reach the object store"),
])
def test_an_unusable_store_ends_in_one_line(s3, teacher, synth_data, tmp_path, monkeypatch, case, variable, value,
                                            message):
    cache = f"s3://no-such-bucket-{tmp_path.name.lower().replace('_', '-')[:30]}/c.zarr" if variable is None \
        else url(tmp_path)
    if variable:
        monkeypatch.setenv(variable, f"http://127.0.0.1:{free_port()}" if value == "closed port" else value)
    start = time.monotonic()
    for args in (["cache", "info", cache], assign_args(teacher, synth_data, cache),
                 ["student-train", "--cache", cache, "--data", synth_data, "--out", tmp_path / "s", *TINY]):
        line = error_line(invoke(*args))
        assert line.startswith(f"error: {cache}: {message}"), (case, args[0], line)
    assert time.monotonic() - start < 60  # bounded retries: seconds, not minutes
    assert list(tmp_path.iterdir()) == []  # the student wrote no run folder


def test_overwrite_and_refusals_hold_on_s3(s3, teacher, synth_data, remote, tmp_path):
    cache = url(tmp_path)
    first = [*assign_args(teacher, synth_data, cache), "--views", "orig"]
    assert invoke(*first).exit_code == 0
    before = info(cache)
    line = error_line(invoke(*assign_args(teacher, synth_data, cache)))
    assert line == f"error: {cache}: a cache is already there; pass --resume to finish it or --overwrite to replace it"
    assert info(cache) == before
    result = invoke(*assign_args(teacher, synth_data, cache, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert info(cache)["digest"] == info(remote)["digest"] and keys(s3, f"{tmp_path.name}/.c.zarr") == []
    # Not a lad cache: refused, with or without --overwrite, and left as it was.
    s3.put_object(Bucket=BUCKET, Key=f"{tmp_path.name}/other/notes.txt", Body=b"mine")
    line = error_line(invoke(*assign_args(teacher, synth_data, url(tmp_path, "other"), "--overwrite")))
    assert line == (f"error: {url(tmp_path, 'other')}: exists and is not a cache lad wrote; lad replaces only its own "
                    "outputs, so choose another path (nothing was changed)")
    assert keys(s3, f"{tmp_path.name}/other") == [f"{tmp_path.name}/other/notes.txt"]


def test_one_writer_at_a_time(s3, teacher, synth_data, tmp_path):
    cache = url(tmp_path)
    held = Lock(object_store(f"s3://{BUCKET}/{tmp_path.name}"), ".c.zarr.lock", cache)  # a live writer's lock
    try:
        line = error_line(invoke(*assign_args(teacher, synth_data, cache)))
        assert line == (f"error: {cache}: another lad process is writing this cache now (it holds .c.zarr.lock); "
                        "wait for it, or write elsewhere")
        assert keys(s3, f"{tmp_path.name}/") == [f"{tmp_path.name}/.c.zarr.lock"]
    finally:
        held.release()


def test_a_swap_killed_midway_leaves_the_new_store_whole(s3, teacher, synth_data, remote, tmp_path, monkeypatch):
    """--overwrite copies the new store over the old one under a marker: killed half-way, readers
    read the new one (whole, in the partial) and the next writer finishes the copy."""
    from lad_cli.distill.cache import url_claim

    cache = url(tmp_path)
    assert invoke(*assign_args(teacher, synth_data, cache, "--views", "orig")).exit_code == 0

    def killed_half_way(store, name):
        new = sorted(url_claim._keys(store, f".{name}.partial"))
        for key in new[: len(new) // 2]:
            obstore.copy(store, f".{name}.partial/{key}", f"{name}/{key}")
        raise KeyboardInterrupt

    monkeypatch.setattr(url_claim, "_finish_swap", killed_half_way)
    assert invoke(*assign_args(teacher, synth_data, cache, "--overwrite")).exit_code != 0
    monkeypatch.undo()
    assert keys(s3, f"{tmp_path.name}/.c.zarr.swap")
    assert info(cache)["digest"] == info(remote)["digest"]  # the new store, read from the partial
    result = invoke(*assign_args(teacher, synth_data, cache, "--resume"))
    assert result.exit_code == 0 and json.loads(result.stdout)["computed"] == 0, result.output
    assert info(cache)["digest"] == info(remote)["digest"] and keys(s3, f"{tmp_path.name}/.c.zarr") == []


def test_student_on_s3_equals_the_student_on_disk(s3, remote, local, synth_data, tmp_path):
    """Two loader workers read the bucket (each its own client: started fresh, not forked from a
    process that used one), in a real process so that a hung worker fails the test."""
    common = ["--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    result = invoke("student-train", "--cache", local, "--out", tmp_path / "disk", *common)
    assert result.exit_code == 0, result.output
    done = subprocess.run([sys.executable, "-m", "lad_cli", "student-train", "--cache", remote, "--out",
                           tmp_path / "s3", *map(str, common), "--workers", "2"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("disk", "s3")}
    assert len(runs["s3"]) == len(runs["disk"]) >= 3
    for a, b in zip(runs["s3"], runs["disk"]):
        for key in ("loss", "loss_cls", "loss_box", "loss_iou"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["iteration"], key)
    assert json.loads((tmp_path / "s3" / "config.json").read_text())["cache"] == remote


@pytest.mark.parametrize("message, why", [
    ("Generic S3 error: error sending request for url (http://127.0.0.1:40317/lad-test?list-type=2): connection refused",
     "cannot reach the object store"),
    ("Generic S3 error: Client error with status 403 Forbidden: <Error><Code>AccessDenied</Code></Error>",
     "access denied: check the credentials"),
])
def test_a_port_with_403_in_it_is_no_access_denied(message, why):
    """A refused connection to a port like 40317 once read as 'access denied' (a clean-clone run here)."""
    assert request_failure(RuntimeError(message)).startswith(why)
