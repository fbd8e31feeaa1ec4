"""The storage layer in-process: URIs, local directories and object-store directories (pyarrow's mock filesystem).

The same against a real S3 API (moto's server), the lease and whole jobs on it are in
``tests/integration/test_corpus_object_store.py``."""

from __future__ import annotations

import pickle

import pytest

from minilm_npu.corpus.directory import open_directory
from minilm_npu.corpus.localdir import LocalDirectory
from minilm_npu.corpus.objectstore import ObjectDirectory
from minilm_npu.corpus.storage import RemotePath, input_path, is_uri, local_path, resolve
from minilm_npu.errors import InputError


class Crash(Exception):
    pass


# -- URIs and the two kinds of directory ----------------------------------------------------------------------
def test_uris_local_paths_and_clear_errors(tmp_path):
    assert is_uri("s3://b/k") and is_uri("gs://b/k") and not is_uri("file:///x") and not is_uri("/x/y")
    assert local_path("file:///tmp/out") == local_path("/tmp/out")
    assert isinstance(open_directory(f"file://{tmp_path}"), LocalDirectory)
    assert isinstance(open_directory("s3://bucket/prefix"), ObjectDirectory)  # resolved lazily: no request yet
    with pytest.raises(InputError, match=r"nope://x/y: cannot open this storage URI \(Unrecognized"):
        resolve("nope://x/y")
    with pytest.raises(InputError, match="Missing bucket name"):
        resolve("s3:///just-a-key")
    remote = pickle.loads(pickle.dumps(RemotePath("s3://b/dir/docs.jsonl.gz")))
    assert remote == RemotePath("s3://b/dir/docs.jsonl.gz") and remote._fs is None  # workers resolve it again
    assert (remote.name, remote.suffix, str(remote)) == ("docs.jsonl.gz", ".gz", "s3://b/dir/docs.jsonl.gz")
    assert isinstance(input_path(str(tmp_path)), type(tmp_path))


def test_local_directory_write_is_atomic_and_a_failed_write_leaves_nothing(tmp_path):
    directory = LocalDirectory(tmp_path)
    written = directory.write("a.json", lambda sink: sink.write(b"hello"))
    assert (written.file, written.bytes, directory.read_bytes("a.json")) == ("a.json", 5, b"hello")
    assert written.sha256 == directory.sha256("a.json")

    def torn(sink):
        sink.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        directory.write("a.json", torn)
    assert directory.read_bytes("a.json") == b"hello" and sorted(directory.names()) == ["a.json"]
    with directory.append_file("side") as side:
        side.write(b"one\n")
        side.sync()
        assert side.tell() == 4
    directory.truncate("side", 2)
    assert directory.read_bytes("side") == b"on" and directory.size("missing") is None


def mock_directory() -> ObjectDirectory:
    from pyarrow._fs import _MockFileSystem

    fs = _MockFileSystem()
    fs.create_dir("bucket/out")  # the mock is hierarchical; object stores need no directories
    return ObjectDirectory("mock://bucket/out", fs=fs, path="bucket/out")


def test_object_directory_writes_whole_objects_or_nothing():
    directory = mock_directory()
    written = directory.write("a.json", lambda sink: sink.write(b"hello"))
    assert directory.read_bytes("a.json") == b"hello" and written.sha256 == directory.sha256("a.json")
    for failing in ("fill", "before_commit", "guard"):

        def fill(sink, failing=failing):
            sink.write(b"partial")
            if failing == "fill":
                raise Crash()

        directory.guard = (lambda: (_ for _ in ()).throw(Crash())) if failing == "guard" else None
        with pytest.raises(Crash):
            directory.write(
                "b.parquet",
                fill,
                before_commit=(lambda: (_ for _ in ()).throw(Crash())) if failing == "before_commit" else None,
            )
        assert directory.size("b.parquet") is None, failing  # no partial object is left behind
    directory.guard = None
    side = directory.append_file("side")
    side.write(b"one\n")
    side.flush()
    assert directory.read_bytes("side") is None  # appended but not synced: not on the store
    side.sync()
    side.write(b"tw")
    side.close()  # never synced: dropped, as the manifest's skipped_bytes does not count it
    assert directory.read_bytes("side") == b"one\n" and directory.append_file("side").tell() == 4
    directory.truncate("side", 2)
    assert directory.read_bytes("side") == b"on"
    assert sorted(directory.names()) == ["a.json", "side"]
    directory.delete("side")
    directory.delete("never-there")
    assert directory.names() == ["a.json"] and directory.describe("x") == "mock://bucket/out/x"
