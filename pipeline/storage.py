"""Reading and writing run artifacts on a local path or any URI pyarrow's filesystems handle
(``file://``, ``s3://``, ``gs://``), so nothing assumes a disk shared across nodes."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
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
    for info in src_fs.get_file_info(pafs.FileSelector(src_inner, recursive=True)):
        if info.type != pafs.FileType.File or any(fnmatch.fnmatch(info.base_name, p) for p in skip):
            continue
        target = dst_inner + "/" + info.path[len(src_inner) :].lstrip("/")
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


def fetch(path: str) -> str:
    """A path on this node's disk with the contents of ``path`` (a file or a folder): ``path``
    itself on a local disk, else a fresh download (nothing assumes a disk shared between nodes)."""
    local = local_path(path)
    if local is not None:
        return local
    fs, inner = filesystem(path)
    folder = _node_folder("fetch", path)
    if fs.get_file_info(inner).type == pafs.FileType.File:
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, inner.rsplit("/", 1)[-1])
        pafs.copy_files(
            inner, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
        return target
    copy_dir(path, folder)
    return folder
