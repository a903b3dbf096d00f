"""The same storage suite against a local folder and a real S3 endpoint on loopback."""

import pytest

from pipelines.storage import Storage, join


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
