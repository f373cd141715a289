"""Reading and writing run artifacts on a local path or any URI pyarrow's filesystems handle
(``file://``, ``s3://``, ``gs://``), so nothing assumes a disk shared across nodes."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``path`` and the path inside it (plain paths are local, made absolute)."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


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
