"""Read and write batches and artifacts on a local folder or S3, with one set of functions.

A location is a plain path (``var/landing/b.csv``) or an ``s3://bucket/key`` URI. Writes are atomic: a local
file is written to a temporary sibling and renamed; an S3 object only becomes visible when its single PUT (or
multipart upload) completes, and a failed multipart upload is aborted. ``move`` copies, verifies the copy by
content hash, and only then removes the source, so a batch is never lost half way.

User-supplied batch references go through :func:`resolve_batch`, which confines them to the landing prefix.
The landing queue (:func:`waiting_batches`, :func:`note_attempt`, :func:`set_aside`) counts the runs that picked
a batch and sets a batch aside after ``dag.batch_max_attempts`` runs, so one failing batch cannot block the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import BadInput

if TYPE_CHECKING:
    from pipelines.config import Settings

_CHUNK = 8 * 1024 * 1024
#: What validate can read: a CSV (UTF-8) or a Parquet file; compared case-insensitively.
BATCH_SUFFIXES = (".csv", ".parquet")
_MAX_REF_CHARS = 1024


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with ``/``."""
    out = str(base).rstrip("/")
    for part in parts:
        if part:
            out = f"{out}/{str(part).strip('/')}"
    return out


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/key")
    return bucket, key


class Storage:
    """Storage operations bound to one S3 client configuration.

    Args:
        endpoint_url: S3 endpoint (MinIO, a loopback test server); None for AWS.
        region: AWS region for the client.
    """

    def __init__(self, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None

    @property
    def s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
            )
        return self._client

    # --- reading ---------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise

    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_file():
                raise FileNotFoundError(f"no file at {uri!r}")
            return path.read_bytes()
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                raise FileNotFoundError(f"no object at {uri!r}") from None
            raise

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def list(self, prefix: str) -> list[str]:
        """List files (not folders) under ``prefix``, recursively, sorted."""
        if not is_s3(prefix):
            root = Path(prefix)
            if not root.exists():
                return []
            if root.is_file():
                return [str(root)]
            return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(out)

    def content_hash(self, uri: str) -> str:
        """SHA-256 of the bytes at ``uri``, as hex."""
        digest = hashlib.sha256()
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                digest.update(chunk)
        else:
            if not Path(uri).is_file():
                raise FileNotFoundError(f"no file at {uri!r}")
            with open(uri, "rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    # --- writing ---------------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> str:
        """Write ``data`` atomically; returns ``uri``."""
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
            return uri
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return uri

    def write_text(self, uri: str, text: str) -> str:
        return self.write_bytes(uri, text.encode("utf-8"))

    def upload_file(self, local_path: str | Path, uri: str) -> str:
        """Copy a local file to ``uri`` atomically (multipart for big files on S3)."""
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            # upload_file aborts its multipart upload on failure, so no partial object becomes visible.
            self.s3.upload_file(str(local_path), bucket, key)
            return uri
        with self.open_write(uri) as tmp:
            shutil.copyfile(local_path, tmp)
        return uri

    def download_file(self, uri: str, local_path: str | Path) -> Path:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            self.s3.download_file(bucket, key, str(local_path))
        else:
            if not Path(uri).is_file():
                raise FileNotFoundError(f"no file at {uri!r}")
            shutil.copyfile(uri, local_path)
        return local_path

    @contextmanager
    def open_write(self, uri: str) -> Iterator[Path]:
        """Yield a local temporary path; on success its content is published at ``uri`` atomically."""
        suffix = "".join(Path(basename(uri)).suffixes)
        if is_s3(uri):
            with tempfile.TemporaryDirectory() as tmpdir:
                tmp = Path(tmpdir) / f"part{suffix}"
                yield tmp
                self.upload_file(tmp, uri)
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def upload_dir(self, local_dir: str | Path, uri: str) -> str:
        """Copy every file under ``local_dir`` to ``uri`` (a folder), each file atomically."""
        local_dir = Path(local_dir)
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                self.upload_file(path, join(uri, path.relative_to(local_dir).as_posix()))
        return uri

    def download_dir(self, uri: str, local_dir: str | Path) -> Path:
        """Copy every file under ``uri`` into ``local_dir``; a local ``uri`` is returned as is."""
        if not is_s3(uri):
            if not Path(uri).is_dir():
                raise FileNotFoundError(f"no folder at {uri!r}")
            return Path(uri)
        local_dir = Path(local_dir)
        prefix = uri.rstrip("/") + "/"
        files = self.list(uri)
        if not files:
            raise FileNotFoundError(f"no objects under {uri!r}")
        for obj in files:
            self.download_file(obj, local_dir / obj[len(prefix) :])
        return local_dir

    def copy(self, src: str, dst: str) -> str:
        if is_s3(src) and is_s3(dst):
            sb, sk = _split_s3(src)
            db, dk = _split_s3(dst)
            self.s3.copy({"Bucket": sb, "Key": sk}, db, dk)
            return dst
        if is_s3(src):
            with self.open_write(dst) as tmp:
                self.download_file(src, tmp)
            return dst
        if not Path(src).is_file():
            raise FileNotFoundError(f"no file at {src!r}")
        return self.upload_file(src, dst)

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
        else:
            Path(uri).unlink(missing_ok=True)

    def move(self, src: str, dst: str) -> str:
        """Copy ``src`` to ``dst``, verify the copy by content hash, then delete ``src``.

        Raises:
            OSError: the copy does not match the source; the source is kept.
        """
        src_hash = self.content_hash(src)
        self.copy(src, dst)
        dst_hash = self.content_hash(dst)
        if dst_hash != src_hash:
            raise OSError(f"copy of {src!r} to {dst!r} does not match (sha256 {dst_hash} != {src_hash}); source kept")
        self.delete(src)
        return dst


@lru_cache(maxsize=8)
def _storage(endpoint_url: str | None, region: str) -> Storage:
    return Storage(endpoint_url, region)


def get_storage(settings: Settings) -> Storage:
    """The storage for ``settings`` (one client per endpoint, reused)."""
    return _storage(settings.storage.s3_endpoint_url, settings.storage.s3_region)


# --- batch references ------------------------------------------------------------------------------
def _refused(param: str, ref: str, landing: str, problem: str) -> BadInput:
    shown = ref if len(ref) <= 200 else ref[:200] + "..."
    return BadInput(
        f"param {param}={shown!r} {problem}; expected a .csv or .parquet file inside the landing prefix {landing!r}"
    )


def resolve_batch(settings: Settings, ref: str, *, param: str = "batch_uri", must_exist: bool = True) -> str:
    """Turn a user-supplied batch reference into a location confined to the landing prefix.

    ``ref`` is a name inside landing (``batch_007.csv``, ``2026/01/b.parquet``), a local path (relative to the
    working directory or absolute) or an ``s3://bucket/key`` URI. Local paths are checked by their real path,
    symlinks resolved; S3 keys must lie in the landing bucket under the landing prefix, with no empty, ``.`` or
    ``..`` segment. The target must be one file (not a folder) whose name ends in ``.csv`` or ``.parquet`` and
    whose path has no hidden (``.``-prefixed) part.

    Args:
        settings: the settings whose ``paths`` give the landing prefix.
        ref: the reference as the user gave it.
        param: the parameter's name, for the message.
        must_exist: also require the file to exist (validate passes False to find an earlier outcome).

    Returns:
        The location: the configured landing prefix joined with the file's path inside it (local), or
        ``s3://<landing bucket>/<key>``.

    Raises:
        BadInput: one line naming ``param``, the problem and the landing prefix; never the file's content.
    """
    landing = settings.uri(settings.paths.landing)
    ref = "" if ref is None else str(ref).strip()
    if not ref:
        raise _refused(param, ref, landing, "is empty")
    if len(ref) > _MAX_REF_CHARS:
        raise _refused(param, ref, landing, f"is longer than {_MAX_REF_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in ref):
        raise _refused(param, ref, landing, "contains control characters")
    if is_s3(landing):
        return _resolve_s3(settings, ref, param, landing, must_exist)
    return _resolve_local(ref, param, landing, must_exist)


def _check_name(parts: list[str], param: str, ref: str, landing: str) -> None:
    if any(part.startswith(".") for part in parts):
        raise _refused(param, ref, landing, "names a hidden or temporary file")
    if not parts[-1].lower().endswith(BATCH_SUFFIXES):
        raise _refused(param, ref, landing, "does not end in .csv or .parquet")


def _resolve_local(ref: str, param: str, landing: str, must_exist: bool) -> str:
    if "://" in ref:
        raise _refused(param, ref, landing, "is a URI, but the landing prefix is a local folder")
    path = Path(ref)
    if not path.is_absolute():
        # A bare name (or a path that exists there) means a file inside landing; else a path from here.
        inside = Path(landing) / ref
        if ("/" not in ref and os.sep not in ref) or os.path.lexists(inside):
            path = inside
    real_landing = os.path.realpath(landing)
    real = os.path.realpath(path)
    if os.path.commonpath([real, real_landing]) != real_landing:
        raise _refused(param, ref, landing, "resolves outside the landing prefix")
    if real == real_landing:
        raise _refused(param, ref, landing, "is the landing folder itself")
    parts = Path(os.path.relpath(real, real_landing)).parts
    if os.path.isdir(real):
        raise _refused(param, ref, landing, "is a folder, not a file")
    _check_name(list(parts), param, ref, landing)
    if os.path.exists(real) and not os.path.isfile(real):
        raise _refused(param, ref, landing, "is not a regular file")
    if must_exist and not os.path.isfile(real):
        raise _refused(param, ref, landing, "does not exist")
    return join(landing, *parts)


def _resolve_s3(settings: Settings, ref: str, param: str, landing: str, must_exist: bool) -> str:
    bucket, prefix = _split_s3(landing)
    prefix_parts = [p for p in prefix.split("/") if p]
    if is_s3(ref):
        ref_bucket, _, key = ref[len("s3://") :].partition("/")
        if not ref_bucket:
            raise _refused(param, ref, landing, "has no bucket")
        if ref_bucket != bucket:
            raise _refused(param, ref, landing, f"is in bucket {ref_bucket!r}, not the landing bucket")
        if not key:
            raise _refused(param, ref, landing, "names a bucket, not an object")
    elif "://" in ref or ref.startswith("/"):
        raise _refused(param, ref, landing, "is not inside the S3 landing prefix")
    else:
        key = "/".join([*prefix_parts, ref])  # a name inside landing
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _refused(param, ref, landing, "has an empty, '.' or '..' segment in its key")
    if parts[: len(prefix_parts)] != prefix_parts or len(parts) == len(prefix_parts):
        raise _refused(param, ref, landing, "is outside the landing prefix")
    _check_name(parts[len(prefix_parts) :], param, ref, landing)
    uri = f"s3://{bucket}/{key}"
    storage = get_storage(settings)
    if not storage.exists(uri):
        if storage.list(uri + "/"):
            raise _refused(param, ref, landing, "is a folder, not a file")
        if must_exist:
            raise _refused(param, ref, landing, "does not exist")
    return uri


# --- the landing queue -----------------------------------------------------------------------------
def waiting_batches(settings: Settings) -> list[str]:
    """The batches waiting in landing (CSV or Parquet, no hidden parts), oldest first (name order)."""
    landing = settings.uri(settings.paths.landing)
    out = []
    for uri in get_storage(settings).list(landing):
        if is_s3(uri):
            rel = uri[len(landing.rstrip("/")) + 1 :].split("/")
        else:
            rel = list(Path(uri).relative_to(Path(landing)).parts)
        if not any(part.startswith(".") for part in rel) and rel[-1].lower().endswith(BATCH_SUFFIXES):
            out.append(uri)
    return out


def _attempts_uri(settings: Settings, source_hash: str) -> str:
    return settings.uri(settings.paths.set_aside, "_attempts", f"{source_hash}.json")


def batch_attempts(settings: Settings, batch_uri: str) -> dict[str, Any]:
    """The runs that picked this batch (by its content hash) so far: ``source_hash``, ``batch_uri``, ``runs``."""
    storage = get_storage(settings)
    source_hash = storage.content_hash(batch_uri)
    uri = _attempts_uri(settings, source_hash)
    if storage.exists(uri):
        return json.loads(storage.read_text(uri))
    return {"source_hash": source_hash, "batch_uri": batch_uri, "runs": []}


def note_attempt(settings: Settings, record: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Add ``run_id`` to a batch's attempts record (once) and store it; returns the record."""
    if run_id not in record["runs"]:
        record = {**record, "runs": [*record["runs"], run_id]}
        get_storage(settings).write_text(_attempts_uri(settings, record["source_hash"]), json.dumps(record, indent=2))
    return record


def clear_attempts(settings: Settings, source_hash: str) -> None:
    """Forget the attempts on a batch content (it left landing)."""
    get_storage(settings).delete(_attempts_uri(settings, source_hash))


def set_aside(settings: Settings, batch_uri: str, record: dict[str, Any], run_id: str) -> str:
    """Move a batch that kept failing out of landing, with a note; returns its folder.

    The folder is ``<set_aside>/<batch name>-<sha256[:8]>/``: the batch and ``note-<run_id>.json`` (the runs that
    picked it). Its attempts record is removed first, so moving the batch back into landing gives it fresh tries.
    """
    from pipelines.context import safe_run_id
    from pipelines.validate import batch_id_of

    storage = get_storage(settings)
    name = basename(batch_uri)
    folder = settings.uri(settings.paths.set_aside, f"{batch_id_of(batch_uri)}-{record['source_hash'][:8]}")
    note = {
        "batch_uri": batch_uri,
        "source_hash": record["source_hash"],
        "runs": record["runs"],
        "set_aside_by": run_id,
        "reason": f"picked by {len(record['runs'])} run(s) without leaving landing "
        f"(dag.batch_max_attempts={settings.dag.batch_max_attempts}); see those runs' logs. "
        "Move the file back into landing to try again.",
    }
    storage.write_text(join(folder, f"note-{safe_run_id(run_id)}.json"), json.dumps(note, indent=2))
    clear_attempts(settings, record["source_hash"])
    storage.move(batch_uri, join(folder, name))
    return folder
