"""Read and write batches and artifacts on a local folder or S3, with one set of functions.

A location is a plain path (``var/landing/b.csv``) or an ``s3://bucket/key`` URI. Writes are atomic: a local
file is written to a temporary sibling and renamed; an S3 object only becomes visible when its single PUT (or
multipart upload) completes, and a failed multipart upload is aborted. ``move`` copies, verifies the copy by
content hash, and only then removes the source, so a batch is never lost half way.

A step's output folder is published with :meth:`Storage.replace_dir`, which swaps a whole folder in (local) or
stages it and removes every key the new folder does not have (S3), so a rerun never leaves files of an earlier
attempt behind. :meth:`Storage.local_dir` gives a step a local folder to read: the folder itself when it is local,
else one download into the caller's scratch folder. Temporary files and folders are named ``.tmp-*``, and
:meth:`Storage.list` skips them.

User-supplied batch references go through :func:`resolve_batch`, which confines them to the landing prefix.
The landing queue (:func:`waiting_batches`, :func:`note_attempt`, :func:`set_aside`) counts the runs that picked
a batch and sets a batch aside after ``dag.batch_max_attempts`` runs, so one failing batch cannot block the rest.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import BadInput

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
#: What validate can read: a CSV (UTF-8) or a Parquet file; compared case-insensitively.
BATCH_SUFFIXES = (".csv", ".parquet")
_MAX_REF_CHARS = 1024
_TMP = ".tmp-"
_STALE_COPY_S = 24 * 3600  # a replace_dir copy no file of which changed for this long was abandoned


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


def _is_temporary(rel: str) -> bool:
    return any(part.startswith(_TMP) for part in rel.split("/"))


def _safe_rel(uri: str, rel: str) -> str:
    """``rel`` (an object's key below a listed prefix) as a relative local path; refuses one that could escape."""
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"object {uri!r} has an empty, '.' or '..' segment in its key; "
            "it cannot be copied into a local folder safely: rename or delete it"
        )
    return rel


def _confine(uri: str, root: str, what: str) -> None:
    """Refuse ``uri`` unless it lies strictly inside the folder ``root`` (both local, or both on S3).

    Local paths are compared by their real paths (symlinks resolved); S3 keys must be in ``root``'s bucket, below
    its prefix, with no empty, ``.`` or ``..`` segment (the rules :func:`resolve_batch` applies to landing).
    """
    problem = None
    if is_s3(uri) != is_s3(root):
        problem = "is not on the same kind of storage (local folder or S3)"
    elif is_s3(uri):
        bucket, key = _split_s3(uri.rstrip("/"))
        root_bucket, root_key = _split_s3(root.rstrip("/"))
        parts, root_parts = key.split("/"), [p for p in root_key.split("/") if p]
        if bucket != root_bucket:
            problem = f"is in bucket {bucket!r}, not {root_bucket!r}"
        elif any(part in ("", ".", "..") for part in parts):
            problem = "has an empty, '.' or '..' segment in its key"
        elif parts[: len(root_parts)] != root_parts or len(parts) <= len(root_parts):
            problem = "is outside it"
    else:
        real_root, real = os.path.realpath(root), os.path.realpath(uri)
        if os.path.commonpath([real, real_root]) != real_root or real == real_root:
            problem = "resolves outside it"
    if problem:
        raise ValueError(f"{what} {uri!r} {problem}; expected a folder inside {root!r}")


def _file_hashes(root: Path) -> dict[str, list[Any]]:
    """SHA-256 and size of every file under ``root`` by relative path; a symlink or other non-file raises OSError."""
    out: dict[str, list[Any]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise OSError(f"{str(path)!r} is not a plain file or folder")
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(chunk)
            out[path.relative_to(root).as_posix()] = [digest.hexdigest(), path.stat().st_size]
    return out


def _copy_matches(entry: Path, record: Path, uri: str, objects: dict[str, list[Any]]) -> bool:
    """Whether the local copy ``entry`` of ``uri`` is still what :meth:`Storage.local_dir` downloaded."""
    try:
        saved = json.loads(record.read_text())
        return saved.get("uri") == uri and saved.get("objects") == objects and saved.get("files") == _file_hashes(entry)
    except (OSError, ValueError):
        return False


def _untouched_for(folder: Path, seconds: float) -> bool:
    """No entry in ``folder`` (nor the folder) was modified in the last ``seconds``."""
    try:
        newest = max([folder.lstat().st_mtime] + [p.lstat().st_mtime for p in folder.rglob("*")])
    except OSError:  # removed meanwhile
        return False
    return time.time() - newest > seconds


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
            import boto3  # heavy (boto3): imported when used
            from botocore.config import Config  # heavy (botocore): imported when used

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
        from botocore.exceptions import ClientError  # heavy (botocore): imported when used

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
        from botocore.exceptions import ClientError  # heavy (botocore): imported when used

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
            return sorted(
                str(p) for p in root.rglob("*") if p.is_file() and not _is_temporary(p.relative_to(root).as_posix())
            )
        return sorted(f"{prefix.rstrip('/')}/{rel}" for rel in self._objects(prefix) if not _is_temporary(rel))

    def _objects(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every object under the S3 folder ``prefix``: key relative to it -> (size, ETag); temporaries included."""
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(key) :]] = (int(obj["Size"]), str(obj.get("ETag", "")))
        return out

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
        tmp = _temporary_copy(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return uri

    def write_text(self, uri: str, text: str) -> str:
        return self.write_bytes(uri, text.encode("utf-8"))

    def write_new(self, uri: str, data: bytes) -> bool:
        """Write ``data`` at ``uri`` only if nothing is there; True when this call wrote it. Atomic against other
        writers: S3's conditional put (``If-None-Match: *``), or a hard link of a complete temporary file, which
        fails when the name exists."""
        if is_s3(uri):
            from botocore.exceptions import ClientError  # heavy (botocore): imported when used

            bucket, key = _split_s3(uri)
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (409, 412):  # PreconditionFailed, or ConditionalRequestConflict (a concurrent put)
                    return False
                raise
            return True
        tmp = _temporary_copy(Path(uri), data)
        try:
            os.link(tmp, uri)
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

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
        """Copy every file under ``local_dir`` to ``uri`` (a folder), each file atomically.

        Files already under ``uri`` that ``local_dir`` lacks stay; to publish a step's output folder use
        :meth:`replace_dir`.
        """
        local_dir = Path(local_dir)
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                self.upload_file(path, join(uri, path.relative_to(local_dir).as_posix()))
        return uri

    def download_dir(self, uri: str, local_dir: str | Path) -> Path:
        """Copy every file under ``uri`` into ``local_dir``; a local ``uri`` is returned as is.

        Raises:
            FileNotFoundError: no folder at a local ``uri``, or no objects under an S3 one.
            ValueError: an object's key has an empty, ``.`` or ``..`` segment (it could land outside ``local_dir``).
        """
        if not is_s3(uri):
            if not Path(uri).is_dir():
                raise FileNotFoundError(f"no folder at {uri!r}")
            return Path(uri)
        uri = uri.rstrip("/")
        objects = self._folder_objects(uri)
        if not objects:
            raise FileNotFoundError(f"no objects under {uri!r}")
        for rel in objects:
            self.download_file(f"{uri}/{rel}", Path(local_dir) / rel)
        return Path(local_dir)

    def _folder_objects(self, uri: str) -> dict[str, tuple[int, str]]:
        """The files of the S3 folder ``uri`` (no temporaries, no ``sub/`` folder markers), keys checked."""
        objects = {
            rel: meta for rel, meta in sorted(self._objects(uri).items()) if not _is_temporary(rel) and rel[-1:] != "/"
        }
        for rel in objects:
            _safe_rel(f"{uri}/{rel}", rel)
        return objects

    def local_dir(self, uri: str, scratch: str | Path, *, what: str = "folder", hint: str | None = None) -> Path:
        """A local folder holding the files under ``uri``: the folder itself when local, else a copy in ``scratch``.

        On S3 the first call downloads the folder into ``scratch/<name>-<sha256(uri)[:12]>`` (into a ``.tmp-``
        folder beside it, renamed in when complete) and records, in ``<that>.json`` beside it, each object's size and
        ETag and each downloaded file's SHA-256 and size. A later call with the same ``scratch`` reuses the copy only
        when the objects are unchanged (one listing) and every file still matches its record, nothing added; else it
        downloads again. Nothing is unpickled. Pass each run's own scratch folder (a ``TemporaryDirectory``): the
        copy is a convenience within a run, not a cache across runs.

        Args:
            uri: a local folder or an ``s3://`` folder.
            scratch: a local folder the caller owns; created when missing.
            what: what the folder is (``"served model folder"``), for the message.
            hint: what to do when nothing is there (``"run the compress step first"``), added to the message.

        Returns:
            The local folder. Read it only: for a local ``uri`` it is the step output itself.

        Raises:
            FileNotFoundError: no folder at a local ``uri``, or no objects under an S3 one.
            ValueError: an object's key has an empty, ``.`` or ``..`` segment.
        """
        suffix = f"; {hint}" if hint else ""
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_dir():
                raise FileNotFoundError(f"no {what} at {uri!r}{suffix}")
            return path
        uri = uri.rstrip("/")
        objects = self._folder_objects(uri)
        if not objects:
            raise FileNotFoundError(f"no {what} at {uri!r} (no objects under it){suffix}")
        scratch = Path(scratch)
        entry = scratch / f"{basename(uri)}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
        record = entry.with_name(f"{entry.name}.json")
        wanted = {rel: list(meta) for rel, meta in objects.items()}
        if entry.is_dir() and _copy_matches(entry, record, uri, wanted):
            return entry
        scratch.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=_TMP, dir=scratch))
        try:
            for rel in objects:
                self.download_file(f"{uri}/{rel}", partial / rel)
            files = _file_hashes(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        record.unlink(missing_ok=True)  # first, so a crash below leaves a copy without a record: never reused
        if entry.exists():
            shutil.rmtree(entry)
        partial.rename(entry)
        record.write_text(json.dumps({"uri": uri, "objects": wanted, "files": files}, sort_keys=True))
        return entry

    def replace_dir(self, local_dir: str | Path, uri: str, *, root: str) -> str:
        """Make the folder ``uri`` hold exactly the files under ``local_dir`` (a rerun leaves nothing stale).

        Local: the files are copied into a temporary sibling (``.tmp-<name>-new-<random>``); then the old folder is
        renamed away, the new one renamed in, and the old one removed. A failure while copying leaves the old folder
        as it was; a crash between the two renames leaves no folder at ``uri`` and the old one beside it as
        ``.tmp-<name>-old-<random>``, never a folder that mixes both (the next successful call removes it). A copy
        killed mid-way stays as ``.tmp-<name>-new-<random>`` until a successful call finds it untouched for a day.

        S3 has no rename. The files are uploaded under a temporary sibling prefix (``.tmp-<name>-<random>/``), copied
        server-side under ``uri`` and checked by size; only then is every key under ``uri`` that the new folder does
        not have deleted, then the staging prefix. Staging, rather than uploading straight under ``uri``, because the
        upload is the long step, over the worker's network, and the likeliest to fail: staged, its failure leaves
        the old folder whole. The server-side copy is quick but not atomic: a crash during it leaves new and old
        objects side by side (readers listing meanwhile see the same), and the next attempt cleans it up. Old keys
        go only after every new one is in place, so the folder never lacks a file the new one has.

        Args:
            local_dir: the folder to publish (its files, recursively; empty folders are not kept).
            uri: the destination folder, local or ``s3://``.
            root: a folder ``uri`` must lie strictly inside (a step passes its own folder); local paths compared by
                real path, S3 keys must be in its bucket under its prefix with no empty, ``.`` or ``..`` segment.

        Returns:
            ``uri``.

        Raises:
            FileNotFoundError: ``local_dir`` is not a folder or holds no file (publishing nothing would delete the
                old output).
            ValueError: ``uri`` lies outside ``root`` or is an existing file.
            OSError: an S3 copy does not match its staged object; the old keys are kept.
        """
        src = Path(local_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"replace_dir source {str(src)!r} is not a folder; nothing to publish at {uri!r}")
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(
                f"replace_dir source {str(src)!r} holds no file; refusing to replace {uri!r} with an empty folder"
            )
        _confine(uri, root, "replace_dir destination")
        uri = uri.rstrip("/")
        if is_s3(uri):
            return self._replace_s3(src, files, uri)
        dst = Path(uri)
        if dst.exists() and not dst.is_dir():
            raise ValueError(f"replace_dir destination {uri!r} is a file; expected a folder (or nothing) there")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        new, old = dst.with_name(f"{_TMP}{dst.name}-new-{tag}"), dst.with_name(f"{_TMP}{dst.name}-old-{tag}")
        try:
            for rel in files:
                (new / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, new / rel)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        had_old = os.path.lexists(dst)
        if had_old:
            os.rename(dst, old)
        try:
            os.rename(new, dst)
        except BaseException:
            if had_old:
                os.rename(old, dst)
            shutil.rmtree(new, ignore_errors=True)
            raise
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
        # an earlier call that crashed between its two renames left the old folder beside: this one replaced it
        for stale in dst.parent.glob(f"{_TMP}{glob.escape(dst.name)}-old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        # a copy killed mid-way: untouched for a day, so no attempt is still writing it
        for partial in dst.parent.glob(f"{_TMP}{glob.escape(dst.name)}-new-*"):
            if _untouched_for(partial, _STALE_COPY_S):
                shutil.rmtree(partial, ignore_errors=True)
        return uri

    def _replace_s3(self, src: Path, files: list[str], uri: str) -> str:
        bucket, key = _split_s3(uri)
        parent, _, name = key.rpartition("/")
        staging = f"s3://{bucket}/{parent + '/' if parent else ''}{_TMP}{name}-{uuid.uuid4().hex[:12]}"
        try:
            for rel in files:
                self.upload_file(src / rel, f"{staging}/{rel}")
            staged = self._objects(staging)
            for rel in files:
                self.copy(f"{staging}/{rel}", f"{uri}/{rel}")
            current = self._objects(uri)
            wrong = [rel for rel in files if rel not in current or current[rel][0] != staged[rel][0]]
            if wrong:
                raise OSError(
                    f"copy of {staging!r} to {uri!r} does not match for {wrong[:3]} (size); old keys kept, rerun"
                )
            for rel in sorted(set(current) - set(files)):
                self.delete(f"{uri}/{rel}")
        except BaseException:
            try:
                self._delete_folder(staging)
            except Exception as exc:  # the original failure matters more; the staging prefix is hidden from list
                log.warning("could not remove the staging prefix %s: %s", staging, exc)
            raise
        self._delete_folder(staging)
        return uri

    def _delete_folder(self, uri: str) -> None:
        for rel in self._objects(uri):
            self.delete(f"{uri}/{rel}")

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


def _temporary_copy(path: Path, data: bytes) -> str:
    """``data`` in a hidden temporary file beside ``path`` (its folder created), flushed to disk; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


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
    return join(_attempts_folder(settings), f"{source_hash}.json")


def _attempts_folder(settings: Settings) -> str:
    return settings.uri(settings.paths.set_aside, "_attempts")


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


LOCKS = "_locks"


@contextmanager
def exclusive(settings: Settings, name: str, owner: str, *, wait_s: float, ttl_s: float) -> Iterator[None]:
    """Hold the lock ``name`` while the block runs: a small file under ``<artifact_root>/_locks`` created only if
    absent (:meth:`Storage.write_new`), so every process that shares the artifact root (workers, containers, pods,
    the CLI) waits for it. A holder that died leaves its lock behind: after ``ttl_s`` it counts as stale and the
    next waiter takes it over. That takeover is a read then a delete, not atomic; the TTL must exceed the longest
    hold, and a warning names the holder it replaced.

    Raises:
        TimeoutError: the lock stayed held by a live holder for ``wait_s`` seconds; the message names the holder.
    """
    storage = get_storage(settings)
    uri = settings.uri(LOCKS, f"{name}.json")
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        now = time.time()
        mine = {"owner": owner, "token": token, "acquired": now, "expires": now + ttl_s}
        if storage.write_new(uri, json.dumps(mine).encode()):
            break
        try:
            raw = storage.read_text(uri)
        except FileNotFoundError:  # released meanwhile: try again at once
            continue
        try:
            held = json.loads(raw)
        except ValueError:
            held = {}
        if float(held.get("expires", 0)) < now:
            try:
                unchanged = storage.read_text(uri) == raw
            except FileNotFoundError:  # its holder released it after all
                continue
            if unchanged:
                log.warning("lock %s: taking over from %s, whose lease ran out", name, held.get("owner", "unknown"))
                storage.delete(uri)
            continue
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"lock {name!r} held by {held.get('owner')!r} for over {wait_s:.0f} s (lease until "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(float(held['expires'])))}); retry later"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        try:
            if json.loads(storage.read_text(uri)).get("token") == token:
                storage.delete(uri)
        except (FileNotFoundError, ValueError):  # taken over as stale: not ours to remove
            pass


def withdraw_attempt(settings: Settings, run_id: str) -> list[str]:
    """Take ``run_id`` off every batch's attempts record (a run the user stopped is not a failed try: a batch
    must not be set aside because its runs were interrupted); returns the batch URIs it was taken off."""
    storage = get_storage(settings)
    withdrawn = []
    for uri in storage.list(_attempts_folder(settings)):
        if not uri.endswith(".json"):
            continue
        try:
            record = json.loads(storage.read_text(uri))
        except (FileNotFoundError, ValueError):  # gone meanwhile, or not a record: not this run's
            continue
        if run_id not in record.get("runs", []):
            continue
        runs = [r for r in record["runs"] if r != run_id]
        if runs:
            storage.write_text(uri, json.dumps({**record, "runs": runs}, indent=2))
        else:
            storage.delete(uri)
        withdrawn.append(record.get("batch_uri", uri))
    return withdrawn


def clear_attempts(settings: Settings, source_hash: str) -> None:
    """Forget the attempts on a batch content (it left landing)."""
    get_storage(settings).delete(_attempts_uri(settings, source_hash))


def batch_id_of(uri: str) -> str:
    """The batch id of a landing file: its name without extensions, made safe as a path segment."""
    name = basename(uri)
    stem = name.split(".", 1)[0] if not name.startswith(".") else name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_.")
    if not cleaned:
        raise BadInput(f"param batch_uri={uri!r} has no usable file name; expected e.g. landing/batch_007.csv")
    return cleaned


def set_aside(settings: Settings, batch_uri: str, record: dict[str, Any], run_id: str) -> str:
    """Move a batch that kept failing out of landing, with a note; returns its folder.

    The folder is ``<set_aside>/<batch name>-<sha256[:8]>/``: the batch and ``note-<run_id>.json`` (the runs that
    picked it). Its attempts record is removed first, so moving the batch back into landing gives it fresh tries.
    """
    from pipelines.context import safe_run_id  # not at the top: pipelines.context imports this module

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
