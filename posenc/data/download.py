"""Find, download, verify and cache data files.

Where a file comes from, in order:

1. a local directory: the ``data_dir`` argument, else the environment variable ``POSENC_DATA``.
   A local directory is *your* copy, so it is trusted as it is, except that when a ``SHA256SUMS``
   file (``sha256sum`` format) sits next to the file and lists it, the file must match it;
2. the cache: ``cache_dir``, else ``POSENC_CACHE``, else ``~/.cache/posenc``. A cached file is
   checked against the expected SHA-256 on every use; a mismatch deletes it and downloads again;
3. the network: ``urllib`` streams into a temporary file in the cache directory, the SHA-256 is
   checked, and only then is the file moved into place with ``os.replace`` (atomic on POSIX).
   Any failure (network error, early close, wrong hash, Ctrl-C) deletes the temporary file, so
   the cache never holds a half-written file.

Without a known hash nothing is downloaded unless the caller says ``allow_unverified=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

CHUNK = 1 << 20  # bytes read per step when hashing or downloading
SUMS_FILE = "SHA256SUMS"


class DownloadError(RuntimeError):
    """A download failed (network error, HTTP error, or the server closed the connection early)."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the expected one."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$POSENC_CACHE``, else ``~/.cache/posenc``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("POSENC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posenc"


def local_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory: ``data_dir``, else ``$POSENC_DATA``, else None."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("POSENC_DATA")
    return Path(env).expanduser() if env else None


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(directory: str | os.PathLike) -> dict[str, str]:
    """``{file name: hex SHA-256}`` from ``directory/SHA256SUMS``; empty if there is none.

    The format is ``sha256sum``'s: ``<64 hex digits><space><space or *><name>`` per line.
    """
    sums = Path(directory) / SUMS_FILE
    if not sums.is_file():
        return {}
    table = {}
    for number, line in enumerate(sums.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if len(digest) != 64 or not name:
            raise ValueError(f"{sums}:{number}: not a sha256sum line: {line!r}")
        table[name] = digest.lower()
    return table


def verify_with_sums(path: str | os.PathLike) -> None:
    """Checks ``path`` against the ``SHA256SUMS`` next to it, if that lists it.

    Raises:
      ChecksumError: the file's hash differs from the listed one.
    """
    path = Path(path)
    expected = read_sha256sums(path.parent).get(path.name)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(
                f"{path} does not match {path.parent / SUMS_FILE}: expected sha256 {expected}, got {actual}"
            )


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Opens a temporary file next to ``path`` for binary writing; on success moves it to ``path``.

    On any exception the temporary file is deleted and ``path`` is left untouched, so readers
    see either the old file, no file, or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    """Streams ``url`` to ``dest`` through a temporary file, checking length and hash."""
    try:
        with atomic_open(dest) as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            digest = hashlib.sha256()
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise DownloadError(f"{dest.name}: the server sent {received} of {total} bytes from {url}")
            actual = digest.hexdigest()
            if sha256 is not None and actual != sha256:
                raise ChecksumError(
                    f"{dest.name} downloaded from {url} has sha256 {actual}, expected {sha256}; "
                    "the file was discarded"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DownloadError(f"could not download {dest.name} from {url}: {err}") from err
    if sha256 is None:
        warnings.warn(f"{dest.name} was downloaded without verification; its sha256 is {actual}", stacklevel=3)


def fetch(
    url: str,
    sha256: str | None,
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    allow_unverified: bool = False,
    download: bool = True,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """The path of ``filename``: from a local directory, the cache, or downloaded from ``url``.

    Args:
      url: where to download the file from if it is found nowhere else.
      sha256: its expected hex SHA-256, or None if unknown.
      filename: the file's name in the local directory and in the cache.
      cache_dir: the cache directory (default: ``$POSENC_CACHE`` or ``~/.cache/posenc``).
      data_dir: a local directory searched first (default: ``$POSENC_DATA``).
      allow_unverified: with ``sha256=None``, allow using a cached file or downloading one
        without a hash check (a warning prints the hash you got, to pin it).
      download: if False, only local and cached files are used (no network).
      progress: show a tqdm bar while downloading.
      timeout: seconds to wait for the server before giving up.

    Returns:
      The path of the verified file.

    Raises:
      DownloadError: the download failed; nothing is left behind.
      ChecksumError: the downloaded file, a local file listed in its directory's ``SHA256SUMS``,
        or (with ``download=False``) the cached file has the wrong hash; downloaded and cached
        files with a wrong hash are deleted.
      ValueError: ``sha256`` is None and ``allow_unverified`` is False.
      FileNotFoundError: ``download=False`` and the file is neither local nor cached.
    """
    if Path(filename).name != filename:
        raise ValueError(f"filename must be a bare file name, got {filename!r}")
    sha256 = sha256.lower() if sha256 is not None else None
    local = local_root(data_dir)
    if local is not None and (local / filename).is_file():
        verify_with_sums(local / filename)
        return local / filename
    cached = cache_root(cache_dir) / filename
    if not cached.is_file() and not download:
        places = ([str(local)] if local is not None else []) + [str(cached.parent)]
        raise FileNotFoundError(f"{filename} is not in {' or '.join(places)} and download=False")
    if sha256 is None and not allow_unverified:
        raise ValueError(
            f"no SHA-256 is known for {filename} ({url}), so it is not used unverified; pass "
            "allow_unverified=True to accept it anyway, or put the file in a local directory "
            "(data_dir= or $POSENC_DATA)"
        )
    if cached.is_file():
        if sha256 is None or sha256_file(cached) == sha256:
            return cached
        cached.unlink()
        if not download:
            raise ChecksumError(f"cached {cached} had the wrong sha256 and was deleted; download=False")
        warnings.warn(f"cached {cached} had the wrong sha256; downloading it again", stacklevel=2)
    _download(url, cached, sha256, progress, timeout)
    return cached


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extracts a tar archive (any compression) into the directory ``dest``, atomically.

    The members go to a temporary directory next to ``dest`` (with tarfile's ``"data"`` filter,
    which refuses absolute paths, links out of the tree and device files), which is renamed to
    ``dest`` when complete. An existing ``dest`` is returned as it is.

    Returns:
      ``dest``.
    """
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
