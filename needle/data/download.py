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


#: default limits of one download: the whole transfer must finish within the deadline (a
#: server trickling bytes cannot hold it forever) and may not exceed max_bytes
DEFAULT_DEADLINE = 1800.0
DEFAULT_MAX_BYTES = 1 << 30
#: largest decompressed size read_verified_gz accepts by default (MNIST's largest is 47 MB)
DEFAULT_MAX_GZ_SIZE = 256 << 20


def _fetch_once(url, tmp_file, timeout, progress, desc, deadline=None, max_bytes=None):
    """Stream ``url`` into the open binary file ``tmp_file``; return its SHA-256.

    deadline: a ``time.monotonic()`` value by which the transfer must be complete;
    max_bytes: the most bytes accepted. Either raises TimeoutError / DataIntegrityError."""
    h = hashlib.sha256()
    def remaining():
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{url}: download did not finish within its deadline")
        return min(timeout, left)

    with urllib.request.urlopen(url, timeout=remaining()) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total is not None and total.isdigit() else None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise DataIntegrityError(f"{url}: announces {total} bytes, more than the limit "
                                     f"{max_bytes}")
        sock = getattr(getattr(response, "fp", None), "raw", None)
        sock = getattr(sock, "_sock", None)
        bar = None
        if progress and tqdm is not None:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                       leave=False)
        received = 0
        try:
            while True:
                left = remaining()
                if sock is not None:
                    sock.settimeout(left)
                # read1 returns what has arrived (read(n) would wait for all n bytes, however
                # slowly they come), so the deadline is checked after every piece
                chunk = response.read1(1 << 16)
                if not chunk:
                    break
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise DataIntegrityError(f"{url}: more than the limit of {max_bytes} bytes")
                tmp_file.write(chunk)
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and received != total:
            # http.client usually raises IncompleteRead itself; this covers the rest
            raise HTTPException(f"{url}: received {received} of {total} bytes")
    return h.hexdigest()


def download_url(urls, dest, sha256, *, retries=3, timeout=60.0, progress=True, backoff=1.0,
                 deadline=DEFAULT_DEADLINE, max_bytes=DEFAULT_MAX_BYTES):
    """Download the first reachable of ``urls`` to ``dest`` and verify its SHA-256.

    Args:
        urls: a URL string or a list of mirror URLs, tried in order.
        dest: destination file path; its directory is created if needed.
        sha256: expected hex digest (str) or a collection of accepted digests.
        retries: attempts per URL on network errors (at least 1).
        timeout: socket timeout in seconds for each attempt.
        progress: show a tqdm progress bar.
        deadline: seconds the whole download (all attempts and mirrors) may take at most.
        max_bytes: largest file accepted (the transfer stops as soon as it is exceeded).

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
    end = time.monotonic() + float(deadline)
    for url in urls:
        for attempt in range(max(1, int(retries))):
            if time.monotonic() >= end:
                errors.append(f"{url}: the {deadline:g} s deadline of this download expired")
                break
            try:
                # Published under ``dest`` only when the checksum matched; any exception
                # (network, mismatch, KeyboardInterrupt) discards the partial file.
                with atomic_write(dest, "wb", suffix=".part") as tmp_file:
                    digest = _fetch_once(url, tmp_file, timeout, progress, dest.name,
                                         deadline=end, max_bytes=max_bytes)
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
                    time.sleep(max(0.0, min(backoff * (attempt + 1), end - time.monotonic())))
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


def _open_regular(path):
    """Open a regular file for reading (FIFOs and devices are refused without blocking)."""
    from ..serialization import SerializationError, open_regular
    try:
        return open_regular(path)
    except SerializationError as e:
        raise DataIntegrityError(str(e)) from None


def _gunzip_limited(f, path, max_size, digest=None):
    """Decompress the gzip stream of the open file ``f`` (all members) into bytes, refusing
    more than ``max_size`` decompressed bytes before producing them; ``digest`` (a hashlib
    object) is updated with the decompressed bytes as they come."""
    out = bytearray()
    d = zlib.decompressobj(wbits=31)
    fed = False  # the current member has received input but not ended yet
    pending = b""
    while True:
        data = pending or f.read(1 << 20)
        pending = b""
        if not data:
            break
        fed = True
        while data:
            piece = d.decompress(data, max_size + 1 - len(out))
            out += piece
            if digest is not None:
                digest.update(piece)
            if len(out) > max_size:
                raise DataIntegrityError(f"{path}: decompresses to more than {max_size} bytes "
                                         f"(the limit for this file); refusing it")
            if d.eof:  # a member ended: the rest may be another member
                pending, d, fed = d.unused_data, zlib.decompressobj(wbits=31), False
                break
            data = d.unconsumed_tail
    if fed:
        raise DataIntegrityError(f"{path}: truncated gzip stream")
    return bytes(out)


def read_verified_gz(path, gz_sha256=(), raw_sha256=(), max_size=DEFAULT_MAX_GZ_SIZE):
    """Read a gzip file, check it, and return its decompressed bytes.

    The file is accepted when the SHA-256 of the .gz bytes is one of ``gz_sha256`` (the
    official archive) or the SHA-256 of the decompressed content is one of ``raw_sha256``
    (the same data recompressed, as in some offline copies). With both empty no checksum is
    required. The compressed checksum is computed while streaming, before anything is
    decompressed, and no more than ``max_size`` bytes are ever decompressed (a gzip bomb
    stops there). Only regular files are read. Raises ``DataIntegrityError`` naming the file
    on a truncated/corrupt gzip stream, a size over the limit or a checksum mismatch.
    """
    path = Path(path)
    gz_sha256 = {gz_sha256} if isinstance(gz_sha256, str) else set(gz_sha256)
    raw_sha256 = {raw_sha256} if isinstance(raw_sha256, str) else set(raw_sha256)
    with _open_regular(path) as f:
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        official = h.hexdigest() in gz_sha256
        if (gz_sha256 or raw_sha256) and not official and not raw_sha256:
            raise DataIntegrityError(
                f"{path}: checksum mismatch (sha256 of the file {h.hexdigest()}); expected the "
                "official file. Delete it to download again.")
        f.seek(0)
        raw_digest = hashlib.sha256() if raw_sha256 and not official else None
        try:
            raw = _gunzip_limited(f, path, max_size, raw_digest)
        except zlib.error as e:
            raise DataIntegrityError(f"{path}: not a valid gzip file or truncated ({e})") from None
    if raw_digest is not None and raw_digest.hexdigest() not in raw_sha256:
        raise DataIntegrityError(
            f"{path}: checksum mismatch (sha256 of the file {h.hexdigest()}); expected the "
            "official file or its exact decompressed content. Delete it to download again.")
    return raw
