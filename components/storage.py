"""One URI abstraction for every pipeline step: a local path or ``s3://bucket/prefix``.

Every step reads and writes through these functions, so the same code runs on a laptop
(folders) and on a cluster (S3 / MinIO, where Ray workers on other nodes must see the data).

S3 access goes through boto3 and its standard configuration chain: credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), a profile, or an
instance role; region from ``AWS_DEFAULT_REGION`` / ``AWS_REGION``; endpoint from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (read natively by botocore >= 1.31, e.g. MinIO
``http://minio.medgan:9000`` or a moto server). When a custom endpoint is configured, path-style
addressing is used (``http://host:9000/bucket/key``), which MinIO and moto need; override with
``MEDGAN_S3_ADDRESSING_STYLE`` (``path``, ``virtual`` or ``auto``). This module never logs nor
stores credentials: messages name only URIs, buckets and endpoints.

Example:
    >>> from components import storage
    >>> uri = storage.join("s3://medgan/runs", "r1")          # or a local folder
    >>> with storage.staged_output(uri) as out:                 # doctest: +SKIP
    ...     (out / "model.pt").write_bytes(b"...")
    >>> storage.list_files(uri)                                 # doctest: +SKIP
    ['_SUCCESS', 'model.pt']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "SUCCESS_MARKER",
    "StorageError",
    "StorageNotFoundError",
    "is_s3",
    "split_s3",
    "join",
    "exists",
    "is_complete",
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "read_json",
    "write_json",
    "upload_dir",
    "download_dir",
    "list_files",
    "sha256_file",
    "local_copy",
    "staged_output",
]

log = logging.getLogger(__name__)

#: Name of the marker object written last by :func:`staged_output` once all files are published.
SUCCESS_MARKER = "_SUCCESS"

_S3_PREFIX = "s3://"
_FILE_PREFIX = "file://"
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI involved."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """Nothing exists at the URI (missing file, object, prefix or bucket)."""


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True if ``uri`` is an ``s3://`` URI.

    >>> is_s3("s3://medgan/data"), is_s3("/data/medgan"), is_s3(Path("runs"))
    (True, False, False)
    """
    return isinstance(uri, str) and uri.startswith(_S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key has no leading slash.

    >>> split_s3("s3://medgan/runs/r1/")
    ('medgan', 'runs/r1/')
    >>> split_s3("s3://medgan")
    ('medgan', '')
    """
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(_S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket name: {uri!r} (expected s3://bucket/prefix)")
    return bucket, key.lstrip("/")


def _local_path(uri: str | os.PathLike[str]) -> Path:
    """Local path for a local URI (plain path or ``file://``); rejects other schemes."""
    s = os.fspath(uri)
    if s.startswith(_FILE_PREFIX):
        s = s[len(_FILE_PREFIX) :]
    elif "://" in s:
        raise ValueError(
            f"unsupported URI scheme in {s!r}: expected a local path, file:// or s3://bucket/prefix"
        )
    if not s:
        raise ValueError("empty URI: expected a local path or s3://bucket/prefix")
    return Path(s)


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Append path parts to a URI with ``/`` semantics (leading slashes in parts are ignored).

    >>> join("s3://medgan/runs/", "r1", "/model.pt")
    's3://medgan/runs/r1/model.pt'
    >>> join("/data", "processed", "manifest.json")
    '/data/processed/manifest.json'
    """
    clean = [p.strip("/") for p in parts if p.strip("/")]
    if is_s3(uri):
        base = str(uri).rstrip("/")
        return "/".join([base, *clean])
    return os.fspath(_local_path(uri).joinpath(*clean))


def _rel_key(key: str, prefix: str) -> str:
    return key[len(prefix) :] if prefix else key


def _dir_prefix(key: str) -> str:
    """S3 key prefix that lists the 'directory' ``key`` ('' for the bucket root)."""
    key = key.strip("/")
    return f"{key}/" if key else ""


# --------------------------------------------------------------------------- S3 client


def _s3_env_key() -> tuple[str | None, ...]:
    """Settings that change which client we need; hashed so no credential stays in the key."""
    names = (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "MEDGAN_S3_ADDRESSING_STYLE",
    )
    digest = hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()
    return (digest,)


@lru_cache(maxsize=4)
def _client_for(_key: tuple[str | None, ...]) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - boto3 is a dependency of the pipeline extra
        raise StorageError("s3:// URIs need boto3: pip install boto3") from e
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = os.environ.get("MEDGAN_S3_ADDRESSING_STYLE") or ("path" if custom_endpoint else "auto")
    if style not in {"path", "virtual", "auto"}:
        raise StorageError(
            f"MEDGAN_S3_ADDRESSING_STYLE={style!r}: expected 'path', 'virtual' or 'auto'"
        )
    config = Config(
        s3={"addressing_style": style},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=16,
    )
    # endpoint_url is left unset on purpose: botocore reads AWS_ENDPOINT_URL(_S3) itself.
    return boto3.session.Session().client("s3", config=config)


def _s3() -> Any:
    return _client_for(_s3_env_key())


def _endpoint_note() -> str:
    ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" (endpoint {ep})" if ep else ""


def _translate(err: Exception, uri: str, action: str) -> StorageError:
    """Turn a botocore error into a StorageError whose message names the URI."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return StorageError(
            f"cannot {action} {uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, e.g. from the medgan-s3 Secret)"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        bucket = split_s3(uri)[0]
        if code == "NoSuchBucket":
            return StorageNotFoundError(
                f"cannot {action} {uri}: bucket {bucket!r} does not exist{_endpoint_note()}"
            )
        if code in {"NoSuchKey", "404", "NotFound"}:
            return StorageNotFoundError(f"cannot {action} {uri}: no such object{_endpoint_note()}")
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return StorageError(
                f"cannot {action} {uri}: access denied ({code}){_endpoint_note()}; check the "
                "S3 credentials and bucket policy"
            )
        return StorageError(f"cannot {action} {uri}: S3 error {code}{_endpoint_note()}: {err}")
    if isinstance(err, BotoCoreError):
        return StorageError(f"cannot {action} {uri}: {err}")
    raise err


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as e:
        raise _translate(e, uri, action) from e


def _s3_list(uri: str) -> list[str]:
    """All keys under the 'directory' ``uri`` relative to it (directory markers skipped)."""
    bucket, key = split_s3(uri)
    prefix = _dir_prefix(key)
    out: list[str] = []
    with _s3_errors(uri, "list"):
        for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    out.append(_rel_key(obj["Key"], prefix))
    return sorted(out)


# --------------------------------------------------------------------------- single objects


def exists(uri: str | os.PathLike[str]) -> bool:
    """True if a file/directory (local) or an object or non-empty prefix (S3) is at ``uri``.

    A missing S3 bucket raises :class:`StorageNotFoundError` rather than returning False,
    so a misconfigured bucket is not mistaken for "not produced yet".

    >>> exists("/definitely/not/here")
    False
    """
    if not is_s3(uri):
        return _local_path(uri).exists()
    uri = str(uri)
    bucket, key = split_s3(uri)
    from botocore.exceptions import ClientError

    client = _s3()
    if not key.strip("/"):
        with _s3_errors(uri, "check"):
            client.head_bucket(Bucket=bucket)
        return True
    if not key.endswith("/"):
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in {"404", "NoSuchKey", "NotFound"}:
                raise _translate(e, uri, "check") from e
    with _s3_errors(uri, "check"):
        resp = client.list_objects_v2(Bucket=bucket, Prefix=_dir_prefix(key), MaxKeys=1)
    return int(resp.get("KeyCount", 0)) > 0


def is_complete(uri: str | os.PathLike[str]) -> bool:
    """True if ``uri`` was published by :func:`staged_output` (its ``_SUCCESS`` marker exists).

    >>> is_complete("/definitely/not/here")
    False
    """
    return exists(join(uri, SUCCESS_MARKER))


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """Read a whole file/object.

    Raises :class:`StorageNotFoundError` naming ``uri`` when it is missing.

    >>> read_bytes("s3://medgan/manifest.json")  # doctest: +SKIP
    b'{...}'
    """
    if is_s3(uri):
        uri = str(uri)
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "read"):
            return bytes(_s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    path = _local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise StorageNotFoundError(f"cannot read {os.fspath(uri)}: no such file") from e
    except IsADirectoryError as e:
        raise StorageError(f"cannot read {os.fspath(uri)}: it is a directory") from e


def _atomic_write_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file/object. Local writes go to a temp name and are renamed into place.

    >>> import tempfile, pathlib
    >>> d = tempfile.mkdtemp()
    >>> write_bytes(join(d, "a", "b.bin"), b"xy"); read_bytes(join(d, "a", "b.bin"))
    b'xy'
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes({os.fspath(uri)!r}): data must be bytes, got {type(data)}")
    if is_s3(uri):
        uri = str(uri)
        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            raise ValueError(f"cannot write to {uri}: the URI names a prefix, not an object key")
        with _s3_errors(uri, "write"):
            _s3().put_object(Bucket=bucket, Key=key, Body=bytes(data))
        return
    _atomic_write_local(_local_path(uri), bytes(data))


def read_text(uri: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """Read a text file/object (UTF-8 by default)."""
    return read_bytes(uri).decode(encoding)


def write_text(uri: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write a text file/object (UTF-8 by default), atomically for local paths."""
    write_bytes(uri, text.encode(encoding))


def read_json(uri: str | os.PathLike[str]) -> Any:
    """Parse a JSON file/object; a syntax error names the URI and position.

    >>> import tempfile
    >>> p = join(tempfile.mkdtemp(), "m.json"); write_json(p, {"b": 1, "a": [1, 2]})
    >>> read_json(p)
    {'a': [1, 2], 'b': 1}
    """
    raw = read_bytes(uri)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StorageError(f"{os.fspath(uri)} is not valid JSON: {e}") from e


def write_json(uri: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON with sorted keys and indent 2 (trailing newline).

    >>> import tempfile
    >>> p = join(tempfile.mkdtemp(), "m.json"); write_json(p, {"b": 1, "a": 2})
    >>> read_bytes(p).decode()
    '{\\n  "a": 2,\\n  "b": 1\\n}\\n'
    """
    text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"
    write_bytes(uri, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a local file, read in 1 MiB chunks.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp(), "x"); _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except FileNotFoundError as e:
        raise StorageNotFoundError(f"cannot hash {os.fspath(path)}: no such file") from e
    return h.hexdigest()


# --------------------------------------------------------------------------- directories


def _walk_local(root: Path) -> list[str]:
    return sorted(
        PurePosixPath(p.relative_to(root)).as_posix() for p in root.rglob("*") if p.is_file()
    )


def list_files(uri: str | os.PathLike[str]) -> list[str]:
    """Sorted relative paths (``/``-separated) of all files under a directory/prefix.

    Raises :class:`StorageNotFoundError` when nothing is there (missing local directory,
    missing bucket, or an S3 prefix without objects). An existing empty local folder gives [].

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); write_bytes(join(d, "x", "1.bin"), b"1")
    >>> list_files(d)
    ['x/1.bin']
    """
    if is_s3(uri):
        keys = _s3_list(str(uri))
        if not keys:
            raise StorageNotFoundError(f"nothing under {uri}: the prefix has no objects")
        return keys
    root = _local_path(uri)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "no such directory"
        raise StorageNotFoundError(f"cannot list {os.fspath(uri)}: {what}")
    return _walk_local(root)


def _parallel(fn: Any, items: list[Any], max_workers: int) -> None:
    if len(items) <= 1 or max_workers <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for _ in pool.map(fn, items):  # re-raises the first failure
            pass


def upload_dir(
    local_dir: str | os.PathLike[str], uri: str | os.PathLike[str], max_workers: int = 8
) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri``; returns the relative keys written.

    For S3, files go up in parallel (multipart for large ones). For a local ``uri`` the tree is
    copied file by file (each file atomically). Existing files at the destination are
    overwritten; other files there are left alone (use :func:`staged_output` to replace).

    >>> upload_dir("/tmp/ckpt", "s3://medgan/runs/r1/ckpt")  # doctest: +SKIP
    ['model.pt', 'state.json']
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageNotFoundError(f"cannot upload {os.fspath(local_dir)}: no such directory")
    rels = _walk_local(src)
    if is_s3(uri):
        uri = str(uri)
        bucket, key = split_s3(uri)
        prefix = _dir_prefix(key)
        client = _s3()

        def put(rel: str) -> None:
            with _s3_errors(join(uri, rel), "upload to"):
                client.upload_file(str(src / rel), bucket, prefix + rel)

        _parallel(put, rels, max_workers)
        log.debug("uploaded %d files to %s", len(rels), uri)
        return rels
    dst = _local_path(uri)
    if dst.resolve() == src.resolve():
        return rels
    for rel in rels:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copy2(src / rel, tmp)
        os.replace(tmp, target)
    return rels


def download_dir(
    uri: str | os.PathLike[str], local_dir: str | os.PathLike[str], max_workers: int = 8
) -> Path:
    """Make the files under ``uri`` available in ``local_dir``; returns the local directory.

    S3: downloads every object under the prefix (missing prefix -> :class:`StorageNotFoundError`).
    Local: if ``uri`` already is ``local_dir`` it is returned as is, otherwise the tree is copied.

    >>> download_dir("s3://medgan/processed/v1", "/tmp/processed")  # doctest: +SKIP
    PosixPath('/tmp/processed')
    """
    dst = Path(local_dir)
    if not is_s3(uri):
        src = _local_path(uri)
        if not src.is_dir():
            raise StorageNotFoundError(f"cannot download {os.fspath(uri)}: no such directory")
        if dst.exists() and dst.resolve() == src.resolve():
            return src
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return dst
    uri = str(uri)
    bucket, key = split_s3(uri)
    prefix = _dir_prefix(key)
    rels = list_files(uri)
    client = _s3()
    dst.mkdir(parents=True, exist_ok=True)
    root = dst.resolve()

    def get(rel: str) -> None:
        target = (dst / rel).resolve()
        if root not in target.parents:  # keys like '../x' must not escape local_dir
            raise StorageError(f"refusing to download {join(uri, rel)} outside {dst}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        with _s3_errors(join(uri, rel), "download"):
            client.download_file(bucket, prefix + rel, str(tmp))
        os.replace(tmp, target)

    _parallel(get, rels, max_workers)
    log.debug("downloaded %d files from %s", len(rels), uri)
    return dst


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a local directory holding the files at ``uri``, for reading.

    Local URIs are yielded as they are (no copy; do not modify them). S3 prefixes are
    downloaded to a temporary directory that is removed on exit.

    >>> with local_copy("s3://medgan/processed/v1") as d:  # doctest: +SKIP
    ...     manifest = (d / "manifest.json").read_text()
    """
    if not is_s3(uri):
        path = _local_path(uri)
        if not path.exists():
            raise StorageNotFoundError(f"cannot read {os.fspath(uri)}: no such file or directory")
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="medgan-in-"))
    try:
        download_dir(uri, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_output(uri: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty local directory to write into; publish it to ``uri`` only on success.

    On a clean exit a ``_SUCCESS`` marker is added and the directory is published:

    * local: the staging directory is a sibling of the target, renamed into place; an existing
      target is replaced only then (moved aside, swapped, deleted), so readers never see a
      half-written output under the final name.
    * S3: the old ``_SUCCESS`` marker is removed, all files are uploaded, stale objects of a
      previous output under the prefix are deleted, and ``_SUCCESS`` is written last; readers
      should check :func:`is_complete`.

    If the block raises, nothing is published and the staging directory is deleted.

    >>> import tempfile
    >>> out = join(tempfile.mkdtemp(), "model")
    >>> with staged_output(out) as d:
    ...     _ = (d / "weights.bin").write_bytes(b"w")
    >>> list_files(out)
    ['_SUCCESS', 'weights.bin']
    """
    if is_s3(uri):
        uri = str(uri)
        split_s3(uri)  # validate before the caller does any work
        tmp = Path(tempfile.mkdtemp(prefix="medgan-out-"))
        try:
            yield tmp
            (tmp / SUCCESS_MARKER).unlink(missing_ok=True)
            _publish_s3(tmp, uri)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    target = _local_path(uri)
    if target.exists() and not target.is_dir():
        raise StorageError(f"cannot write output directory {os.fspath(uri)}: a file is there")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the published directory is an ordinary one
    try:
        yield tmp
        (tmp / SUCCESS_MARKER).write_bytes(b"")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_s3(src: Path, uri: str) -> None:
    bucket, key = split_s3(uri)
    prefix = _dir_prefix(key)
    client = _s3()
    marker = prefix + SUCCESS_MARKER
    with _s3_errors(uri, "publish to"):
        client.delete_object(Bucket=bucket, Key=marker)
    new = set(upload_dir(src, uri))
    stale = [prefix + k for k in _s3_list(uri) if k not in new and k != SUCCESS_MARKER]
    with _s3_errors(uri, "publish to"):
        for i in range(0, len(stale), 1000):
            batch = [{"Key": k} for k in stale[i : i + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        client.put_object(Bucket=bucket, Key=marker, Body=b"")
    log.debug("published %d files to %s", len(new), uri)
