"""components.storage against real files and a real S3-protocol server (moto, on 127.0.0.1)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import moto.server as moto_server
import pytest

from components import storage

BUCKET = "medgan-test"
SECRET = "dummy-secret-key-do-not-print"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point boto3 at the moto server through env vars only; return a fresh s3:// prefix."""
    for var in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "MEDGAN_S3_ADDRESSING_STYLE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")  # no endpoint_url: must come from AWS_ENDPOINT_URL
    client.create_bucket(Bucket=BUCKET)  # idempotent in us-east-1
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"


def _tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    (root / "sub" / "deep" / "c.json").write_text('{"c": 3}')


TREE = ["a.txt", "sub/b.bin", "sub/deep/c.json"]


# ---------------------------------------------------------------- URIs


def test_uri_helpers() -> None:
    assert (
        storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x") and not storage.is_s3(Path("s3:"))
    )
    assert storage.split_s3("s3://b/a/b/") == ("b", "a/b/")
    assert storage.join("s3://b/runs/", "r1", "/m.pt") == "s3://b/runs/r1/m.pt"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("/data", "p", "m.json") == "/data/p/m.json"
    assert storage.join("file:///data", "m.json") == "/data/m.json"
    with pytest.raises(ValueError, match="no bucket"):
        storage.split_s3("s3:///key")
    with pytest.raises(ValueError, match="gs://b/x"):
        storage.read_bytes("gs://b/x")


def test_endpoint_comes_from_env(s3: str, endpoint: str) -> None:
    assert boto3.client("s3").meta.endpoint_url == endpoint
    assert storage._s3().meta.endpoint_url == endpoint
    assert storage._s3().meta.config.s3["addressing_style"] == "path"  # MinIO needs path style


# ---------------------------------------------------------------- single objects


def test_local_roundtrip_is_atomic_and_sorted(tmp_path: Path) -> None:
    uri = storage.join(str(tmp_path), "x", "m.json")
    storage.write_json(uri, {"b": 1, "a": {"d": 2, "c": 1}})
    text = Path(uri).read_text()
    assert text == json.dumps({"a": {"c": 1, "d": 2}, "b": 1}, indent=2) + "\n"
    assert storage.read_json(uri) == {"a": {"c": 1, "d": 2}, "b": 1}
    storage.write_bytes(uri, b"replaced")
    assert storage.read_bytes(uri) == b"replaced"
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["m.json"]  # no temp leftovers
    assert storage.exists(uri) and not storage.exists(storage.join(str(tmp_path), "nope"))


def test_s3_roundtrip(s3: str) -> None:
    uri = storage.join(s3, "m.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"z": [1, 2], "a": None})
    assert storage.exists(uri) and storage.exists(s3)  # object and its prefix
    assert storage.read_json(uri) == {"a": None, "z": [1, 2]}
    assert storage.read_bytes(uri).startswith(b'{\n  "a": null')
    storage.write_text(storage.join(s3, "t.txt"), "héllo")
    assert storage.read_text(storage.join(s3, "t.txt")) == "héllo"
    with pytest.raises(ValueError, match="prefix"):
        storage.write_bytes(s3 + "/", b"x")


def test_missing_things_name_the_uri(s3: str, tmp_path: Path) -> None:
    missing = storage.join(s3, "nope.json")
    with pytest.raises(storage.StorageNotFoundError, match=missing) as ei:
        storage.read_bytes(missing)
    assert isinstance(ei.value, FileNotFoundError)
    assert SECRET not in str(ei.value)

    no_bucket = "s3://no-such-bucket-xyz/k.json"
    with pytest.raises(storage.StorageNotFoundError, match="no-such-bucket-xyz.*does not exist"):
        storage.read_bytes(no_bucket)
    with pytest.raises(storage.StorageNotFoundError, match="no-such-bucket-xyz"):
        storage.exists(no_bucket)

    local = str(tmp_path / "absent.json")
    with pytest.raises(storage.StorageNotFoundError, match="absent.json"):
        storage.read_json(local)
    with pytest.raises(storage.StorageNotFoundError, match="absent"):
        storage.sha256_file(local)
    with pytest.raises(storage.StorageNotFoundError, match=storage.join(s3, "empty")):
        storage.list_files(storage.join(s3, "empty"))
    with pytest.raises(storage.StorageNotFoundError, match="no such directory"):
        storage.list_files(str(tmp_path / "absent"))

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(storage.StorageError, match="bad.json is not valid JSON"):
        storage.read_json(str(bad))


# ---------------------------------------------------------------- directories


def test_s3_upload_list_download(s3: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    assert storage.upload_dir(src, s3) == TREE
    assert storage.list_files(s3) == TREE
    assert storage.list_files(s3 + "/sub") == ["b.bin", "deep/c.json"]
    out = storage.download_dir(s3, tmp_path / "dst")
    assert out == tmp_path / "dst"
    for rel in TREE:
        assert storage.sha256_file(out / rel) == storage.sha256_file(src / rel)
    assert not [p for p in out.rglob("*.tmp")]


def test_local_download_and_upload(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    assert storage.download_dir(str(src), src) == src  # same place: no copy
    copy = storage.download_dir(str(src), tmp_path / "copy")
    assert storage.list_files(str(copy)) == TREE
    assert storage.upload_dir(src, str(tmp_path / "up")) == TREE
    assert (tmp_path / "up" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()


def test_local_copy(s3: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    storage.upload_dir(src, s3)
    with storage.local_copy(s3) as d:
        assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) == TREE
        assert (d / "a.txt").read_text() == "alpha"
    assert not d.exists()  # temp copy cleaned up
    with storage.local_copy(str(src)) as d2:
        assert d2 == src
    assert src.exists()  # local input untouched
    with pytest.raises(storage.StorageNotFoundError, match="missing-prefix"):
        with storage.local_copy(storage.join(s3, "missing-prefix")):
            pass


# ---------------------------------------------------------------- staged_output


def test_staged_output_local(tmp_path: Path) -> None:
    target = str(tmp_path / "out" / "model")
    with storage.staged_output(target) as d:
        (d / "w.bin").write_bytes(b"v1")
        (d / "old_only.txt").write_text("x")
        assert not Path(target).exists()  # invisible until the block succeeds
    assert storage.list_files(target) == ["_SUCCESS", "old_only.txt", "w.bin"]
    assert Path(target).stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700
    assert storage.is_complete(target)

    with storage.staged_output(target) as d:  # replaces the whole directory
        (d / "w.bin").write_bytes(b"v2")
    assert storage.list_files(target) == ["_SUCCESS", "w.bin"]
    assert Path(target, "w.bin").read_bytes() == b"v2"

    with pytest.raises(RuntimeError, match="boom"):
        with storage.staged_output(target) as d:
            (d / "w.bin").write_bytes(b"v3-partial")
            raise RuntimeError("boom")
    assert Path(target, "w.bin").read_bytes() == b"v2"  # previous output intact
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]  # no staging left

    fresh = str(tmp_path / "never")
    with pytest.raises(RuntimeError):
        with storage.staged_output(fresh) as d:
            (d / "x").write_text("x")
            raise RuntimeError("fail")
    assert not Path(fresh).exists()


def test_staged_output_s3(s3: str) -> None:
    with storage.staged_output(s3) as d:
        (d / "w.bin").write_bytes(b"v1")
        (d / "stale" / "s.txt").parent.mkdir()
        (d / "stale" / "s.txt").write_text("old")
        assert not storage.exists(s3)
    assert storage.list_files(s3) == ["_SUCCESS", "stale/s.txt", "w.bin"]
    assert storage.is_complete(s3)

    with storage.staged_output(s3) as d:
        (d / "w.bin").write_bytes(b"v2")
    assert storage.list_files(s3) == ["_SUCCESS", "w.bin"]  # stale objects removed
    assert storage.read_bytes(storage.join(s3, "w.bin")) == b"v2"

    with pytest.raises(RuntimeError, match="boom"):
        with storage.staged_output(s3) as d:
            (d / "w.bin").write_bytes(b"v3-partial")
            (d / "new.txt").write_text("n")
            raise RuntimeError("boom")
    assert storage.list_files(s3) == ["_SUCCESS", "w.bin"]
    assert storage.read_bytes(storage.join(s3, "w.bin")) == b"v2"

    failed = storage.join(s3, "failed")
    with pytest.raises(RuntimeError):
        with storage.staged_output(failed) as d:
            (d / "x").write_text("x")
            raise RuntimeError("fail")
    assert not storage.exists(failed) and not storage.is_complete(failed)
