"""The same storage suite against a local folder and a real S3 endpoint on loopback."""

import os
import time

import pytest

from pipelines.io.storage import Storage, join


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    request.getfixturevalue("aws_env")
    return Storage(endpoint_url=endpoint), f"s3://test-bucket/{tmp_path.name}"


def test_storage_write_read_list_exists(store):
    st, root = store
    a, b = join(root, "x", "a.txt"), join(root, "x", "sub", "b.bin")
    assert not st.exists(a)
    st.write_text(a, "hello")
    st.write_bytes(b, b"\x00\x01")
    assert st.exists(a) and st.read_text(a) == "hello" and st.read_bytes(b) == b"\x00\x01"
    assert st.list(join(root, "x")) == sorted([a, b])
    assert st.list(join(root, "missing")) == []


def test_storage_content_hash_and_copy(store):
    st, root = store
    src, dst = join(root, "a.csv"), join(root, "copy", "a.csv")
    st.write_text(src, "text,label\nhi,positive\n")
    st.copy(src, dst)
    assert st.content_hash(src) == st.content_hash(dst)
    assert len(st.content_hash(src)) == 64


def test_storage_move_verifies_then_deletes(store):
    st, root = store
    src, dst = join(root, "landing", "b.csv"), join(root, "quarantine", "b", "b.csv")
    st.write_text(src, "payload")
    st.move(src, dst)
    assert not st.exists(src) and st.read_text(dst) == "payload"


def test_storage_move_keeps_source_when_copy_differs(store, monkeypatch):
    st, root = store
    src, dst = join(root, "m.csv"), join(root, "n.csv")
    st.write_text(src, "original")
    real_copy = st.copy

    def corrupt_copy(a, b):
        real_copy(a, b)
        st.write_text(b, "corrupted")
        return b

    monkeypatch.setattr(st, "copy", corrupt_copy)
    with pytest.raises(OSError, match="does not match"):
        st.move(src, dst)
    assert st.read_text(src) == "original"


def test_storage_interrupted_write_leaves_nothing(store):
    st, root = store
    target = join(root, "big", "model.bin")

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted):
        with st.open_write(target) as tmp:
            tmp.write_bytes(b"half of a model")
            raise Interrupted
    assert not st.exists(target)
    assert st.list(join(root, "big")) == []


def test_storage_interrupted_overwrite_keeps_old_version(store):
    st, root = store
    target = join(root, "o.txt")
    st.write_text(target, "v1")
    with pytest.raises(RuntimeError):
        with st.open_write(target) as tmp:
            tmp.write_text("v2 partial")
            raise RuntimeError("killed")
    assert st.read_text(target) == "v1"


def test_storage_upload_download_dir(store, tmp_path):
    st, root = store
    src = tmp_path / "model"
    (src / "tok").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tok" / "vocab.txt").write_text("a\nb\n")
    st.upload_dir(src, join(root, "m"))
    got = st.download_dir(join(root, "m"), tmp_path / "dl")
    assert (got / "tok" / "vocab.txt").read_text() == "a\nb\n"


def test_storage_missing_file_message(store):
    st, root = store
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        st.read_bytes(join(root, "nope.csv"))


def test_storage_bad_s3_uri():
    with pytest.raises(ValueError, match="no bucket"):
        Storage().read_bytes("s3:///key")


# --- replace_dir and local_dir ---------------------------------------------------------------------
def _folder(path, files):
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def _tree(st, uri):
    prefix = uri.rstrip("/") + "/"
    return {u[len(prefix) :]: st.read_text(u) for u in st.list(uri)}


def test_replace_dir_removes_stale_files(store, tmp_path):
    st, root = store
    dst = join(root, "run", "train", "model")
    st.upload_dir(_folder(tmp_path / "v1", {"a.txt": "1", "old/only.txt": "stale", "keep.txt": "1"}), dst)
    assert st.replace_dir(_folder(tmp_path / "v2", {"a.txt": "2", "keep.txt": "2"}), dst, root=root) == dst
    assert _tree(st, dst) == {"a.txt": "2", "keep.txt": "2"}
    # no staging or swapped-out folder is left beside it, even one hidden from list()
    if dst.startswith("s3://"):
        assert set(st._objects(join(root, "run", "train"))) == {"model/a.txt", "model/keep.txt"}
    else:
        assert sorted(p.name for p in (tmp_path / "root" / "run" / "train").iterdir()) == ["model"]


def test_replace_dir_removes_an_old_folder_left_by_a_crash_between_the_renames(tmp_path):
    st, root = Storage(), str(tmp_path / "root")
    parent = tmp_path / "root" / "run" / "train"
    crashed = _folder(parent / ".tmp-model-old-0123456789ab", {"a.txt": "0"})  # no model/: the crash's state
    other = _folder(parent / ".tmp-model2-old-0123456789ab", {"a.txt": "x"})  # another folder's: not ours
    st.replace_dir(_folder(tmp_path / "v1", {"a.txt": "1"}), str(parent / "model"), root=root)
    assert _tree(st, str(parent / "model")) == {"a.txt": "1"}
    assert not crashed.exists() and other.exists()


def test_replace_dir_creates_a_missing_folder(store, tmp_path):
    st, root = store
    dst = join(root, "new", "served")
    st.replace_dir(_folder(tmp_path / "v1", {"sub/x.bin": "x"}), dst, root=root)
    assert _tree(st, dst) == {"sub/x.bin": "x"}


def test_replace_dir_keeps_the_old_folder_when_the_copy_fails(store, tmp_path, monkeypatch):
    st, root = store
    dst = join(root, "train", "model")
    st.upload_dir(_folder(tmp_path / "v1", {"a.txt": "1", "b.txt": "1"}), dst)
    src = _folder(tmp_path / "v2", {"a.txt": "2", "b.txt": "2", "c.txt": "2"})
    calls = []
    if dst.startswith("s3://"):
        real = st.upload_file

        def flaky_upload(path, uri):
            calls.append(uri)
            if len(calls) == 2:
                raise ConnectionError("network down mid-upload")
            return real(path, uri)

        monkeypatch.setattr(st, "upload_file", flaky_upload)
    else:
        import shutil

        real = shutil.copyfile

        def flaky_copy(a, b, **kw):
            calls.append(b)
            if len(calls) == 2:
                raise OSError("disk full mid-copy")
            return real(a, b, **kw)

        monkeypatch.setattr(shutil, "copyfile", flaky_copy)
    with pytest.raises((ConnectionError, OSError), match="mid-"):
        st.replace_dir(src, dst, root=root)
    monkeypatch.undo()
    assert _tree(st, dst) == {"a.txt": "1", "b.txt": "1"}
    if dst.startswith("s3://"):
        assert set(st._objects(join(root, "train"))) == {"model/a.txt", "model/b.txt"}  # staging removed
    else:
        assert sorted(p.name for p in (tmp_path / "root" / "train").iterdir()) == ["model"]


def test_replace_dir_restores_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    st, root = Storage(), str(tmp_path / "root")
    dst = join(root, "compress", "served")
    st.upload_dir(_folder(tmp_path / "v1", {"a.txt": "1"}), dst)
    real = os.rename

    def rename(a, b):
        if ".tmp-served-new-" in str(a):
            raise OSError("rename refused")
        return real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename refused"):
        st.replace_dir(_folder(tmp_path / "v2", {"b.txt": "2"}), dst, root=root)
    monkeypatch.undo()
    assert _tree(st, dst) == {"a.txt": "1"}
    assert sorted(p.name for p in (tmp_path / "root" / "compress").iterdir()) == ["served"]


def test_replace_dir_missing_or_empty_source(store, tmp_path):
    st, root = store
    dst = join(root, "train", "model")
    st.upload_dir(_folder(tmp_path / "v1", {"a.txt": "1"}), dst)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        st.replace_dir(tmp_path / "missing", dst, root=root)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no file; refusing"):
        st.replace_dir(tmp_path / "empty", dst, root=root)
    assert _tree(st, dst) == {"a.txt": "1"}


def test_replace_dir_refuses_a_destination_outside_root(store, tmp_path):
    st, root = store
    src = _folder(tmp_path / "v1", {"a.txt": "1"})
    outside = [root, join(root, "..", "elsewhere"), join(root + "-sibling", "x")]
    if root.startswith("s3://"):
        outside += [f"s3://other-bucket/{root[len('s3://test-bucket/') :]}/x", join(root, "a//b"), "/tmp/x"]
    else:
        outside += ["s3://test-bucket/x"]
    for dst in outside:
        with pytest.raises(ValueError, match="replace_dir destination .* expected a folder inside"):
            st.replace_dir(src, dst, root=root)


def test_replace_dir_refuses_a_symlink_out_of_root(tmp_path):
    st, root = Storage(), tmp_path / "root"
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "precious.txt").write_text("keep")
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(ValueError, match="resolves outside"):
        st.replace_dir(_folder(tmp_path / "v1", {"a.txt": "1"}), str(root / "link"), root=str(root))
    assert (tmp_path / "victim" / "precious.txt").read_text() == "keep"


def test_replace_dir_refuses_a_file_destination(tmp_path):
    st, root = Storage(), str(tmp_path / "root")
    st.write_text(join(root, "model"), "a file")
    with pytest.raises(ValueError, match="is a file"):
        st.replace_dir(_folder(tmp_path / "v1", {"a.txt": "1"}), join(root, "model"), root=root)
    assert st.read_text(join(root, "model")) == "a file"


def test_local_dir_returns_a_local_folder_unchanged(tmp_path):
    folder = _folder(tmp_path / "model", {"a.txt": "1"})
    got = Storage().local_dir(str(folder), tmp_path / "scratch")
    assert got == folder
    assert not (tmp_path / "scratch").exists()


def test_local_dir_missing_folder_names_it_and_the_hint(store, tmp_path):
    st, root = store
    with pytest.raises(FileNotFoundError, match=r"no served model .*nope.*; run the compress step first"):
        st.local_dir(join(root, "nope"), tmp_path / "scratch", what="served model", hint="run the compress step first")


def test_local_dir_downloads_an_s3_folder_once(s3_endpoint, aws_env, tmp_path, monkeypatch):
    st, root = Storage(endpoint_url=s3_endpoint), f"s3://test-bucket/{tmp_path.name}"
    uri = join(root, "train", "model")
    st.upload_dir(_folder(tmp_path / "v1", {"config.json": "{}", "tok/vocab.txt": "a\nb\n"}), uri)
    downloads = []
    real = st.download_file
    monkeypatch.setattr(st, "download_file", lambda u, p: downloads.append(u) or real(u, p))
    scratch = tmp_path / "scratch"

    first = st.local_dir(uri, scratch)
    assert (first / "tok" / "vocab.txt").read_text() == "a\nb\n" and len(downloads) == 2
    assert st.local_dir(uri + "/", scratch) == first and len(downloads) == 2  # reused, no download

    (first / "config.json").write_text('{"tampered": true}')  # a changed copy is downloaded again
    assert (st.local_dir(uri, scratch) / "config.json").read_text() == "{}" and len(downloads) == 4
    (first / "python_model.pkl").write_bytes(b"planted")  # so is a copy with an extra file
    assert not (st.local_dir(uri, scratch) / "python_model.pkl").exists() and len(downloads) == 6

    st.write_text(join(uri, "config.json"), '{"v": 2}')  # so is a folder changed on S3
    assert (st.local_dir(uri, scratch) / "config.json").read_text() == '{"v": 2}' and len(downloads) == 8
    assert sorted(p.name for p in scratch.iterdir()) == [first.name, f"{first.name}.json"]


def test_local_dir_refuses_a_key_that_escapes(s3_endpoint, aws_env, tmp_path):
    st, root = Storage(endpoint_url=s3_endpoint), f"s3://test-bucket/{tmp_path.name}"
    st.write_text(join(root, "m", "ok.txt"), "ok")
    st.s3.put_object(Bucket="test-bucket", Key=f"{tmp_path.name}/m/../../escape.txt", Body=b"x")
    with pytest.raises(ValueError, match=r"'\.\.' segment"):
        st.local_dir(join(root, "m"), tmp_path / "scratch")
    assert not (tmp_path / "escape.txt").exists()


def test_list_skips_temporary_folders(store, tmp_path):
    st, root = store
    st.write_text(join(root, "f", "a.txt"), "a")
    st.write_text(join(root, "f", ".tmp-model-new-123", "b.txt"), "b")
    assert st.list(join(root, "f")) == [join(root, "f", "a.txt")]


def test_replace_dir_removes_a_killed_copy_only_once_it_is_a_day_old(tmp_path):
    st, root = Storage(), str(tmp_path / "root")
    parent = tmp_path / "root" / "run" / "train"
    killed = _folder(parent / ".tmp-model-new-0123456789ab", {"a.txt": "half", "sub/b.txt": "half"})
    in_flight = _folder(parent / ".tmp-model-new-ba9876543210", {"a.txt": "copying"})  # another attempt's, live
    two_days = time.time() - 2 * 24 * 3600
    for p in [killed, *killed.rglob("*")]:
        os.utime(p, (two_days, two_days))
    st.replace_dir(_folder(tmp_path / "v1", {"a.txt": "1"}), str(parent / "model"), root=root)
    assert _tree(st, str(parent / "model")) == {"a.txt": "1"}
    assert not killed.exists() and in_flight.exists()


# --- write-once files and the lock built on them ------------------------------------------------------------
def test_write_new_writes_only_when_nothing_is_there(store):
    st, root = store
    uri = join(root, "locks", "a.json")
    assert st.write_new(uri, b"first") is True
    assert st.write_new(uri, b"second") is False
    assert st.read_bytes(uri) == b"first"
    assert st.list(join(root, "locks")) == [uri]  # no temporary file left behind


def test_write_new_has_one_winner_among_concurrent_writers(store):
    from concurrent.futures import ThreadPoolExecutor

    st, root = store
    uri = join(root, "race.json")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: st.write_new(uri, str(i).encode()), range(8)))
    assert won.count(True) == 1
    assert st.read_bytes(uri) == str(won.index(True)).encode()


def _lock_settings(tmp_path):
    from pipelines.config import get_settings

    return get_settings(paths__artifact_root=str(tmp_path / "var"))


def test_exclusive_lets_one_holder_in_at_a_time_and_removes_its_lock(tmp_path):
    import threading

    from pipelines.io.storage import exclusive

    settings = _lock_settings(tmp_path)
    spans, start = [], threading.Barrier(3)

    def hold(who):
        start.wait()
        with exclusive(settings, "registry-m", who, wait_s=10, ttl_s=60):
            entered = time.monotonic()
            time.sleep(0.2)
            spans.append((entered, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(f"mover {i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # no two holders overlapped
    assert not (tmp_path / "var" / "_locks" / "registry-m.json").exists()


def test_exclusive_gives_up_naming_a_live_holder_and_takes_over_a_stale_one(tmp_path, caplog):
    import json

    from pipelines.io.storage import exclusive

    settings = _lock_settings(tmp_path)
    lock = tmp_path / "var" / "_locks" / "registry-m.json"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"owner": "promote of 3 by 'alice'", "token": "t", "expires": time.time() + 60}))
    with pytest.raises(TimeoutError, match=r"lock 'registry-m' held by \"promote of 3 by 'alice'\" for over 0 s"):
        with exclusive(settings, "registry-m", "me", wait_s=0.3, ttl_s=60):
            pytest.fail("entered a held lock")
    assert json.loads(lock.read_text())["token"] == "t"  # a waiter that gives up leaves the holder's lock alone

    lock.write_text(json.dumps({"owner": "a crashed run", "token": "t", "expires": time.time() - 1}))
    with exclusive(settings, "registry-m", "me", wait_s=1, ttl_s=60):
        assert json.loads(lock.read_text())["owner"] == "me"
    assert not lock.exists()
    assert "taking over from a crashed run" in caplog.text
