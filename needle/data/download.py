"""Where the data lives, and how missing files are fetched safely.

The data directory is ``resolve_data_dir(data_dir)``: the argument, else the environment
variable ``$NEEDLE_DATA_DIR``, else ``<repo>/data``. Inside it::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}

A missing file is downloaded from its official URL(s) and checked against its published
SHA-256. The bytes go to a temporary file in the destination directory, which is renamed
into place (``os.replace``) only after the checksum matched, so an interrupted or corrupt
download never leaves a file that looks complete. A read-only data directory is never
written to: a missing file there is an error.
"""
import gzip
import hashlib
import os
import time
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path

from .._atomic import atomic_write

try:  # a progress bar is a nicety, not a requirement
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = [
    "DataIntegrityError",
    "resolve_data_dir",
    "sha256_bytes",
    "sha256_file",
    "download_url",
    "ensure_file",
    "read_verified_gz",
]

# <repo>/data: this file is <repo>/needle/data/download.py
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
ENV_VAR = "NEEDLE_DATA_DIR"

_NETWORK_ERRORS = (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError, OSError)


class DataIntegrityError(ValueError):
    """A data file is corrupt, truncated, or does not match its expected checksum."""


def resolve_data_dir(data_dir=None):
    """Return the data directory as a ``Path``: ``data_dir``, else ``$NEEDLE_DATA_DIR``,
    else ``<repo>/data``. The directory is not created here."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def sha256_bytes(data):
    """Hex SHA-256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk_size=1 << 20):
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_writable_dir(directory):
    """True when ``directory`` (or, if it does not exist yet, its nearest existing parent)
    is writable. A directory with no write permission bits, a read-only mount, or one
    ``os.access`` refuses counts as read-only: the superuser passes ``os.access`` everywhere,
    and a directory made read-only on purpose must still never be written to."""
    d = Path(directory)
    while not d.exists():
        if d.parent == d:
            return False
        d = d.parent
    if not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
        return False
    if d.stat().st_mode & 0o222 == 0:
        return False
    try:
        return not os.statvfs(d).f_flag & os.ST_RDONLY
    except (AttributeError, OSError):  # no statvfs (Windows)
        return True


def _fetch_once(url, tmp_file, timeout, progress, desc):
    """Stream ``url`` into the open binary file ``tmp_file``; return its SHA-256."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total is not None and total.isdigit() else None
        bar = None
        if progress and tqdm is not None:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                       leave=False)
        received = 0
        try:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                tmp_file.write(chunk)
                h.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and received != total:
            # http.client usually raises IncompleteRead itself; this covers the rest
            raise HTTPException(f"{url}: received {received} of {total} bytes")
    return h.hexdigest()


def download_url(urls, dest, sha256, *, retries=3, timeout=60.0, progress=True, backoff=1.0):
    """Download the first reachable of ``urls`` to ``dest`` and verify its SHA-256.

    Args:
        urls: a URL string or a list of mirror URLs, tried in order.
        dest: destination file path; its directory is created if needed.
        sha256: expected hex digest (str) or a collection of accepted digests.
        retries: attempts per URL on network errors (at least 1).
        timeout: socket timeout in seconds for each attempt.
        progress: show a tqdm progress bar.

    Returns the destination ``Path``. Raises ``DataIntegrityError`` on a checksum mismatch
    (nothing is left on disk) and ``ConnectionError`` when every attempt failed. Whatever
    happens, including KeyboardInterrupt, no partial file is left behind.
    """
    if isinstance(urls, str):
        urls = [urls]
    accepted = {sha256} if isinstance(sha256, str) else set(sha256)
    accepted = {s.lower() for s in accepted}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        for attempt in range(max(1, int(retries))):
            try:
                # Published under ``dest`` only when the checksum matched; any exception
                # (network, mismatch, KeyboardInterrupt) discards the partial file.
                with atomic_write(dest, "wb", suffix=".part") as tmp_file:
                    digest = _fetch_once(url, tmp_file, timeout, progress, dest.name)
                    if digest not in accepted:
                        raise DataIntegrityError(
                            f"checksum mismatch for {dest.name} downloaded from {url}: "
                            f"sha256 {digest}, expected {' or '.join(sorted(accepted))}; "
                            "the file was discarded")
                return dest
            except _NETWORK_ERRORS as e:
                errors.append(f"{url} (attempt {attempt + 1}): {e}")
                if isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500:
                    break  # e.g. 404: retrying this URL will not help, try the next mirror
                if attempt + 1 < retries:
                    time.sleep(backoff * (attempt + 1))
    raise ConnectionError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))


def _check_writable(directory, filename):
    if not _is_writable_dir(directory):
        raise FileNotFoundError(
            f"{filename} is missing from the data directory {directory}, which is not writable "
            f"so it cannot be downloaded there. Put the file there, or point ${ENV_VAR} (or the "
            "data_dir argument) at a writable directory.")


def ensure_file(directory, filename, urls, sha256, *, download=True, progress=True):
    """Return ``Path(directory) / filename``, downloading it first if it is missing.

    The file is not re-verified here (readers verify what they read). Raises
    ``FileNotFoundError`` when it is missing and ``download`` is False or the directory is
    not writable.
    """
    path = Path(directory) / filename
    if path.is_file():
        return path
    if not download:
        raise FileNotFoundError(f"{path} does not exist (download=False)")
    _check_writable(directory, filename)
    return download_url(urls, path, sha256, progress=progress)


def read_verified_gz(path, gz_sha256=(), raw_sha256=()):
    """Read a gzip file, check it, and return its decompressed bytes.

    The file is accepted when the SHA-256 of the .gz bytes is one of ``gz_sha256`` (the
    official archive) or the SHA-256 of the decompressed content is one of ``raw_sha256``
    (the same data recompressed, as in some offline copies). With both empty no checksum is
    required. Raises ``DataIntegrityError`` naming the file on a truncated/corrupt gzip stream
    or a checksum mismatch.
    """
    path = Path(path)
    gz_sha256 = {gz_sha256} if isinstance(gz_sha256, str) else set(gz_sha256)
    raw_sha256 = {raw_sha256} if isinstance(raw_sha256, str) else set(raw_sha256)
    blob = path.read_bytes()
    gz_digest = sha256_bytes(blob)
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise DataIntegrityError(f"{path}: not a valid gzip file or truncated ({e})") from None
    if gz_sha256 or raw_sha256:
        if gz_digest not in gz_sha256 and sha256_bytes(raw) not in raw_sha256:
            raise DataIntegrityError(
                f"{path}: checksum mismatch (sha256 of the file {gz_digest}); expected the "
                "official file or its exact decompressed content. Delete it to download again.")
    return raw
