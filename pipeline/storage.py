"""Reading and writing run artifacts on a local path or any URI pyarrow's filesystems handle
(``file://``, ``s3://``, ``gs://``), so nothing assumes a disk shared across nodes."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``path`` and the path inside it (plain paths are local, made absolute)."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def absolute(path: str) -> str:
    """``path`` made absolute when it is a local path (URIs are already)."""
    return path if "://" in path else os.path.abspath(path)


def local_path(path: str) -> str | None:
    """Where ``path`` lies on this node's disk (plain paths and ``file://`` URIs); None for object
    stores."""
    if "://" not in path:
        return os.path.abspath(path)
    if path.startswith("file://"):
        return pafs.FileSystem.from_uri(path)[1]
    return None


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """A path inside ``fs`` (as Ray Train's checkpoints give it) as the URI this module reads back."""
    scheme = {"local": "", "s3": "s3://", "gcs": "gs://"}.get(fs.type_name)
    if scheme is None:
        raise ValueError(f"unsupported filesystem {fs.type_name!r} for {path}")
    return scheme + path


def join(base: str, *parts: str) -> str:
    """Join path segments with ``/`` for URIs and the OS separator for local paths."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(inner, recursive=True)


def remove_file(path: str) -> None:
    """Delete the file at ``path`` if there is one."""
    if exists(path):
        fs, inner = filesystem(path)
        fs.delete_file(inner)


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically where the filesystem allows it (temp file + rename on local disks)."""
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0] if "/" in inner else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{inner}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, inner)
        return
    with fs.open_output_stream(inner) as handle:  # object stores publish a file whole on close
        handle.write(data)


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as handle:
        return handle.read()


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def write_parquet(path: str, table: pa.Table) -> None:
    """Write one Parquet file (atomically on local disks)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(path, sink.getvalue().to_pybytes())


def read_parquet(path: str) -> pa.Table:
    fs, inner = filesystem(path)
    return pq.read_table(inner, filesystem=fs)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (streamed)."""
    fs, inner = filesystem(path)
    digest = hashlib.sha256()
    with fs.open_input_stream(inner) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def copy_dir(src: str, dst: str, skip: Iterable[str] = ()) -> None:
    """Replace folder ``dst`` with the files of folder ``src`` (any two stores: local, ``file://``,
    ``s3://``, ``gs://``), leaving out file names matching a glob of ``skip``."""
    src_fs, src_inner = filesystem(src)
    dst_fs, dst_inner = filesystem(dst)
    if type(src_fs) is type(dst_fs) and src_inner == dst_inner:
        return
    if exists(dst):
        dst_fs.delete_dir(dst_inner)
    dst_fs.create_dir(dst_inner, recursive=True)
    files = [
        info
        for info in _files_under(src_fs, src_inner)
        if not any(fnmatch.fnmatch(info.base_name, p) for p in skip)
    ]
    _copy_files(files, src_fs, src_inner, dst_fs, dst_inner)


def _files_under(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """Every file below ``folder`` (recursively)."""
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return [info for info in infos if info.type == pafs.FileType.File]


def _copy_files(
    files: list[pafs.FileInfo],
    src_fs: pafs.FileSystem,
    src_folder: str,
    dst_fs: pafs.FileSystem,
    dst_folder: str,
) -> None:
    """Copy ``files`` (below ``src_folder``) to the same relative paths below ``dst_folder``."""
    for info in files:
        target = dst_folder + "/" + info.path[len(src_folder) :].lstrip("/")
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(info.path, target, source_filesystem=src_fs, destination_filesystem=dst_fs)


def _node_folder(kind: str, path: str) -> str:
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"codiemb-{kind}", digest)


def build_dir(path: str) -> str:
    """Where a folder bound for ``path`` is written on this node: ``path`` itself on a local disk,
    else a node-local folder to hand to :func:`publish_dir` afterwards."""
    local = local_path(path)
    return local if local is not None else _node_folder("build", path)


def publish_dir(built: str, path: str) -> None:
    """Upload a folder made in ``build_dir(path)`` to ``path`` (nothing to do on a local disk)."""
    if local_path(path) is None:
        copy_dir(built, path)


FETCH_MARKER = ".fetch-complete"  # written last beside a cached copy: the copy is complete
FETCH_CACHE_GB = 10.0  # the fetch cache's default cap on each node ($CODIEMB_FETCH_CACHE_GB)
FETCH_IN_USE_S = 3600.0  # a copy used this recently may still be read: it is never evicted


def fetch(path: str) -> str:
    """A path on this node's disk with the contents of ``path`` (a file or a folder): ``path``
    itself on a local disk, else a copy in this node's fetch cache (nothing assumes a disk shared
    between nodes). A copy is reused while the files of ``path`` keep their names, sizes and
    modification times; the cache is bounded (:func:`_evict`)."""
    local = local_path(path)
    if local is not None:
        return local
    fs, inner = filesystem(path.rstrip("/"))
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    is_file = info.type == pafs.FileType.File
    files = [info] if is_file else _files_under(fs, inner)
    version = [fs.type_name, inner, *((f.path, f.size, f.mtime_ns) for f in files)]
    cache = os.path.join(tempfile.gettempdir(), "codiemb-fetch")
    entry = os.path.join(cache, hashlib.sha256(json.dumps(version).encode()).hexdigest()[:16])
    target = os.path.join(entry, info.base_name)  # the copy, named as the source
    try:
        os.utime(os.path.join(entry, FETCH_MARKER))  # complete: reuse it, now most recently used
        return target
    except FileNotFoundError:
        pass
    os.makedirs(cache, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetching-", dir=cache)
    try:
        if not is_file:
            os.mkdir(os.path.join(staging, info.base_name))  # an empty folder is a folder too
        parent = inner.rsplit("/", 1)[0]
        _copy_files(files, fs, parent, pafs.LocalFileSystem(), staging)
        with open(os.path.join(staging, FETCH_MARKER), "w") as handle:
            json.dump({"uri": path}, handle)
        _install(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what is left of a download cut short
    _evict(cache, keep=entry)
    return target


def _install(staging: str, entry: str) -> None:
    """Move a finished download into place (one rename: never seen half-written). A complete copy
    that another process put there first wins; a folder without its marker is replaced."""
    marker = os.path.join(entry, FETCH_MARKER)
    if os.path.isdir(entry) and not os.path.exists(marker):
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(staging, entry)
    except OSError:
        if not os.path.exists(marker):
            raise


def _evict(cache: str, keep: str) -> None:
    """Delete the least recently used copies until the cache holds at most
    ``$CODIEMB_FETCH_CACHE_GB`` (default :data:`FETCH_CACHE_GB`), sparing ``keep`` and every copy
    used in the last :data:`FETCH_IN_USE_S` seconds (``fetch`` cannot know when its caller is done
    reading). Folders without a marker (downloads of killed processes) count and go the same way."""
    cap = float(os.environ.get("CODIEMB_FETCH_CACHE_GB", FETCH_CACHE_GB)) * 1e9
    folders = sorted((*_usage(e.path), e.path) for e in os.scandir(cache) if e.is_dir())
    total = sum(size for _, size, _ in folders)
    recent = time.time() - FETCH_IN_USE_S
    for last_used, size, folder in folders:
        if total <= cap:
            return
        if folder != keep and last_used < recent:
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def _usage(folder: str) -> tuple[float, int]:
    """When a cached folder was last used (its marker's time; without a marker, its newest file's,
    as a download in progress keeps writing) and its size in bytes."""
    try:
        stats = [os.stat(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names]
        marker = os.path.join(folder, FETCH_MARKER)
        newest = max([os.stat(folder).st_mtime, *(s.st_mtime for s in stats)])
        last_used = os.stat(marker).st_mtime if os.path.exists(marker) else newest
    except FileNotFoundError:  # evicted meanwhile by another process
        return 0.0, 0
    return last_used, sum(s.st_size for s in stats)
