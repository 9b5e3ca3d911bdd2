"""fetch(): local directory, cache and verified, atomic downloads from a loopback HTTP server."""

import hashlib
import io
import os
import stat
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from posenc.data.download import (
    ChecksumError, DownloadError, atomic_open, cache_root, extract_tar, fetch, read_sha256sums, sha256_file,
)


class FileServer:
    """Serves the files of a directory on 127.0.0.1; ``/truncated/<name>`` sends half and hangs up."""

    def __init__(self, root: Path):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                truncated = self.path.startswith("/truncated/")
                path = root / self.path.removeprefix("/truncated/").lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncated else body)
                self.close_connection = True

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        """Shuts the server down (again is fine): later requests are refused."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(server, payload, its sha256, cache dir); POSENC_DATA/POSENC_CACHE cleared."""
    monkeypatch.delenv("POSENC_DATA", raising=False)
    monkeypatch.delenv("POSENC_CACHE", raising=False)
    root = tmp_path / "www"
    root.mkdir()
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 123)  # several read chunks
    (root / "blob.bin").write_bytes(payload)
    server = FileServer(root)
    yield server, payload, hashlib.sha256(payload).hexdigest(), tmp_path / "cache"
    server.stop()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_verifies_and_caches(served):
    server, payload, digest, cache = served
    path = fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, progress=False)
    assert path == cache / "blob.bin"
    assert path.read_bytes() == payload
    assert leftovers(cache) == ["blob.bin"]  # no temporary file left next to it
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_hash_mismatch_leaves_nothing(served):
    server, _, digest, cache = served
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        fetch(f"{server.url}/blob.bin", wrong, "blob.bin", cache, progress=False)
    message = str(err.value)
    assert "blob.bin" in message and wrong in message and digest in message
    assert leftovers(cache) == []


def test_interrupted_download_leaves_nothing(served):
    server, _, digest, cache = served
    with pytest.raises(DownloadError, match="blob.bin"):
        fetch(f"{server.url}/truncated/blob.bin", digest, "blob.bin", cache, progress=False)
    assert leftovers(cache) == []


def test_http_error_is_a_download_error(served):
    server, _, digest, cache = served
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{server.url}/absent.bin", digest, "absent.bin", cache, progress=False)
    assert leftovers(cache) == []


def test_unreachable_server_is_a_download_error(served):
    server, _, digest, cache = served
    server.stop()
    with pytest.raises(DownloadError, match="blob.bin"):
        fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, progress=False, timeout=5)


@pytest.mark.parametrize("via_env", [False, True])
def test_local_directory_comes_first(served, tmp_path, monkeypatch, via_env):
    server, _, digest, cache = served
    local = tmp_path / "local"
    local.mkdir()
    (local / "blob.bin").write_bytes(b"my own copy")  # not the served bytes: the local copy is trusted
    if via_env:
        monkeypatch.setenv("POSENC_DATA", str(local))
    path = fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, data_dir=None if via_env else local)
    assert path == local / "blob.bin"
    assert server.requests == 0
    assert leftovers(cache) == []


def test_local_directory_is_checked_against_its_sha256sums(served, tmp_path):
    server, _, digest, cache = served
    local = tmp_path / "local"
    local.mkdir()
    (local / "blob.bin").write_bytes(b"my own copy")
    (local / "SHA256SUMS").write_text(f"{'f' * 64}  blob.bin\n")
    with pytest.raises(ChecksumError, match="SHA256SUMS"):
        fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, data_dir=local)
    (local / "SHA256SUMS").write_text(f"{hashlib.sha256(b'my own copy').hexdigest()} *blob.bin\n")
    assert fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, data_dir=local) == local / "blob.bin"


def test_cache_hit_needs_no_network(served):
    server, payload, digest, cache = served
    fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, progress=False)
    server.stop()
    for download in (True, False):
        path = fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, download=download)
        assert path.read_bytes() == payload
    with pytest.raises(FileNotFoundError, match="other.bin"):
        fetch(f"{server.url}/other.bin", digest, "other.bin", cache, download=False)


def test_corrupt_cache_file_is_downloaded_again(served):
    server, payload, digest, cache = served
    cache.mkdir()
    (cache / "blob.bin").write_bytes(payload[:100])  # a stale, wrong file in the cache
    with pytest.warns(UserWarning, match="wrong sha256"):
        path = fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, progress=False)
    assert path.read_bytes() == payload
    assert server.requests == 1
    (cache / "blob.bin").write_bytes(b"broken")
    with pytest.raises(ChecksumError, match="deleted"):
        fetch(f"{server.url}/blob.bin", digest, "blob.bin", cache, download=False)
    assert leftovers(cache) == []


def test_unknown_hash_needs_opt_in(served):
    server, payload, digest, cache = served
    with pytest.raises(ValueError, match="allow_unverified"):
        fetch(f"{server.url}/blob.bin", None, "blob.bin", cache)
    assert server.requests == 0
    with pytest.warns(UserWarning, match=digest):
        path = fetch(f"{server.url}/blob.bin", None, "blob.bin", cache, allow_unverified=True, progress=False)
    assert path.read_bytes() == payload
    with pytest.raises(ValueError, match="allow_unverified"):  # the unverified cached copy too
        fetch(f"{server.url}/blob.bin", None, "blob.bin", cache)


def test_filename_must_be_bare(served):
    server, _, digest, cache = served
    with pytest.raises(ValueError, match="bare file name"):
        fetch(f"{server.url}/blob.bin", digest, "../blob.bin", cache)


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("POSENC_CACHE", raising=False)
    assert cache_root() == Path.home() / ".cache" / "posenc"
    monkeypatch.setenv("POSENC_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_open_keeps_old_file_on_failure(tmp_path, error):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_open(target) as f:
            f.write(b"half of the new")
            raise error()
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["data.bin"]
    with atomic_open(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


def test_sha256_helpers(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert sha256_file(tmp_path / "a") == hashlib.sha256(b"abc").hexdigest()
    assert read_sha256sums(tmp_path) == {}
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(ValueError, match="SHA256SUMS:1"):
        read_sha256sums(tmp_path)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_tar(tmp_path):
    _tar(tmp_path / "good.tar.bz2", {"top/sub/a.txt": b"hello"})
    dest = extract_tar(tmp_path / "good.tar.bz2", tmp_path / "out")
    assert (dest / "top" / "sub" / "a.txt").read_bytes() == b"hello"
    (dest / "top" / "sub" / "a.txt").write_bytes(b"edited")
    extract_tar(tmp_path / "good.tar.bz2", tmp_path / "out")  # an existing extraction is kept
    assert (dest / "top" / "sub" / "a.txt").read_bytes() == b"edited"


def test_extract_tar_refuses_escaping_members(tmp_path):
    _tar(tmp_path / "evil.tar.bz2", {"../evil.txt": b"x"})
    with pytest.raises(tarfile.TarError):
        extract_tar(tmp_path / "evil.tar.bz2", tmp_path / "out")
    assert leftovers(tmp_path) == ["evil.tar.bz2"]  # no partial extraction, no temporary directory
