"""Context pool: named, versioned, read-only numpy arrays and byte blobs in shared memory.

One process (the daemon root) owns a ``ContextStore`` and publishes; every agent opens a
``ContextReader`` on the same state directory and maps what it needs, without copying::

    owner:  store.put_array("embeddings", arr)      -> new segment, new catalog, old unlinked
    agent:  reader.array("embeddings")              -> read-only ndarray over the mapping

Segment layout (one segment per published version)::

    0      8 bytes  magic b"AGCTX\\x01\\0\\0"
    8      u32      length L of the JSON header
    12     L bytes  {"name", "version", "kind": "array"|"bytes", "descr", "shape", "nbytes"}
    4096   data     C-contiguous array data or the raw bytes (page-aligned)

Decisions (the spec is silent on these):

- **Catalog = one JSON file** ``<state_dir>/contexts.json``, replaced by tmp + rename.  The
  rename is the commit point of a publish: *segment written, then catalog renamed, then the
  old version unlinked*.  A crash before the rename leaves the new segment invisible (no
  catalog names it) and listed in the owner's manifest; ``ContextStore(...)`` with the same
  run removes such orphans at start, and ``sweep()`` removes them once the run is dead.
- **Old versions**: after a publish the previous segment is unlinked.  POSIX keeps an
  unlinked segment's pages alive while any process maps it, so a reader holding a view of
  the old version reads it undisturbed until it drops the view; the next ``array()`` call
  returns the new version.  The reader does not close an old mapping itself (a live numpy
  view pins it; ``mmap.close()`` would raise) — dropping the last view unmaps it.
- **Readers re-read the catalog** when its (inode, mtime, size) changed: one ``stat`` per
  lookup, no JSON parse unless something was published.
- **Races**: a name replaced or removed between the catalog read and the attach makes the
  reader re-read the catalog and try once more, then raise ``ContextNotFound``.
- **The owner keeps each live version mapped**: pages mapped by two processes do not count
  in an agent's USS, so agents' unique memory stays small (measured in perf/memory.py).
- Arrays are stored C-contiguous (any input layout is copied in once); object dtypes are
  refused (pointers mean nothing in another process).
"""

from __future__ import annotations

import ast
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ContextNotFound, InvalidArgument, SegmentNotFound
from .segment import Manifest, RunId, Segment, unlink_segment, write_json_atomically

__all__ = ["ContextStore", "ContextReader", "ContextInfo", "CATALOG_FILE"]

CATALOG_FILE = "contexts.json"
MAGIC = b"AGCTX\x01\x00\x00"
DATA_OFFSET = 4096
_PREFIX = struct.Struct("<8sI")
_MAX_NAME = 200


@dataclass(frozen=True)
class ContextInfo:
    """One published version, as the catalog lists it."""

    name: str
    version: int
    kind: str                      # "array" or "bytes"
    nbytes: int
    segment: str
    descr: str | None = None       # repr of numpy's dtype descr (the .npy header form)
    shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind, "nbytes": self.nbytes,
                "segment": self.segment, "descr": self.descr,
                "shape": list(self.shape) if self.shape is not None else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContextInfo:
        shape = tuple(d["shape"]) if d.get("shape") is not None else None
        return cls(d["name"], int(d["version"]), d["kind"], int(d["nbytes"]), d["segment"],
                   d.get("descr"), shape)

    @property
    def dtype(self) -> np.dtype[Any] | None:
        if self.descr is None:
            return None
        return np.lib.format.descr_to_dtype(ast.literal_eval(self.descr))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
        raise InvalidArgument(f"bad context name {name!r}",
                              hint=f"use a printable string of 1-{_MAX_NAME} characters")
    return name


def _check_array(name: str, arr: np.ndarray) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise InvalidArgument(f"context {name!r}: put_array wants a numpy.ndarray, got {type(arr).__name__}",
                              hint="use put_bytes for bytes-like data")
    if arr.dtype.hasobject:
        raise InvalidArgument(f"context {name!r}: dtype {arr.dtype} holds Python objects",
                              hint="shared memory holds plain data only: convert to a numeric/bytes dtype")
    return arr


def _write_header(seg: Segment, info: ContextInfo) -> None:
    body = json.dumps(info.to_json(), separators=(",", ":")).encode()
    if _PREFIX.size + len(body) > DATA_OFFSET:
        raise InvalidArgument(f"context {info.name!r}: header of {len(body)} bytes does not fit",
                              hint="use fewer dimensions or a simpler dtype")
    _PREFIX.pack_into(seg.mmap, 0, MAGIC, len(body))
    seg.write(_PREFIX.size, body)


def _read_header(seg: Segment) -> dict[str, Any] | None:
    if seg.size < DATA_OFFSET:
        return None
    magic, length = _PREFIX.unpack_from(seg.buf, 0)
    if magic != MAGIC or length > DATA_OFFSET - _PREFIX.size:
        return None
    return json.loads(bytes(seg.buf[_PREFIX.size:_PREFIX.size + length]))


class ContextStore:
    """Owner side: publish, replace and remove contexts of one run in ``state_dir``."""

    def __init__(self, run: RunId, state_dir: str | os.PathLike[str], *,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 reserve: Callable[[int, int, int], None] = os.posix_fallocate) -> None:
        self.run = run
        self.state_dir = os.fspath(state_dir)
        self.catalog_path = os.path.join(self.state_dir, CATALOG_FILE)
        self._manifest = Manifest(self.state_dir, run, tag="ctx")
        self._create_opts = {"statvfs": statvfs, "reserve": reserve}
        self._entries: dict[str, ContextInfo] = {}
        self._segments: dict[str, Segment] = {}
        self._adopt_catalog()
        self.remove_orphans()

    # -- publishing ------------------------------------------------------------------
    def put_array(self, name: str, arr: np.ndarray) -> ContextInfo:
        arr = _check_array(_check_name(name), arr)
        descr = repr(np.lib.format.dtype_to_descr(arr.dtype))

        def fill(seg: Segment) -> None:
            dst = np.frombuffer(seg.mmap, arr.dtype, arr.size, DATA_OFFSET).reshape(arr.shape)
            np.copyto(dst, arr)
            del dst  # release the export so the owner can close this mapping later

        return self._publish(name, "array", arr.nbytes, fill, descr, tuple(arr.shape))

    def put_bytes(self, name: str, data: bytes | bytearray | memoryview) -> ContextInfo:
        view = memoryview(data).cast("B")
        return self._publish(_check_name(name), "bytes", view.nbytes,
                             lambda seg: seg.write(DATA_OFFSET, view))

    def put_file(self, name: str, path: str | os.PathLike[str]) -> ContextInfo:
        """A ``.npy`` file becomes an array (read through a file mapping), anything else bytes."""
        path = os.fspath(path)
        if path.endswith(".npy"):
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise InvalidArgument(f"context {name!r}: {path} cannot be mapped: {e}",
                                      hint="save it without object dtypes (np.save(..., allow_pickle=False))") from e
            return self.put_array(name, arr)
        size = os.path.getsize(path)
        return self._publish(_check_name(name), "bytes", size, lambda seg: _read_into(path, seg, size))

    def remove(self, name: str) -> None:
        if name not in self._entries:
            raise ContextNotFound(f"no context named {name!r} in run {self.run}",
                                  hint="ContextStore.list() shows what is published")
        del self._entries[name]
        self._save_catalog()
        self._retire(self._segments.pop(name))

    def list(self) -> list[ContextInfo]:
        return sorted(self._entries.values(), key=lambda i: i.name)

    def close(self) -> None:
        """Unpublish everything: catalog, segments, manifest (existing readers keep their maps)."""
        self._entries.clear()
        _remove_file(self.catalog_path)
        for seg in self._segments.values():
            self._retire(seg)
        self._segments.clear()
        self._manifest.delete()

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps -----------------------------------------------------------------------
    def _publish(self, name: str, kind: str, nbytes: int, fill: Callable[[Segment], None],
                 descr: str | None = None, shape: tuple[int, ...] | None = None) -> ContextInfo:
        old = self._entries.get(name)
        seg = Segment.create(self.run, "ctx", DATA_OFFSET + nbytes, manifest=self._manifest,
                             **self._create_opts)  # type: ignore[arg-type]
        info = ContextInfo(name, old.version + 1 if old else 1, kind, nbytes, seg.name, descr, shape)
        try:
            _write_header(seg, info)
            fill(seg)
        except BaseException:
            self._retire(seg)
            raise
        self._entries[name] = info
        self._save_catalog()  # commit point: readers see the new version from here on
        if old is not None:
            self._retire(self._segments.pop(name))
        self._segments[name] = seg
        return info

    def _save_catalog(self) -> None:
        write_json_atomically(self.catalog_path, {
            "run": str(self.run), "entries": {n: i.to_json() for n, i in self._entries.items()}})

    def _retire(self, seg: Segment) -> None:
        seg.close()
        seg.unlink()

    def _adopt_catalog(self) -> None:
        """Take over this run's catalog left by a previous store (same run, e.g. after a crash);
        a catalog of another run (dead: one owner per state_dir) is replaced by an empty one."""
        catalog = _read_catalog(self.catalog_path)
        if catalog.get("run") != str(self.run):
            self._save_catalog()  # a dead run's catalog: the new owner starts it empty
            return
        for name, raw in catalog.get("entries", {}).items():
            info = ContextInfo.from_json(raw)
            try:
                self._segments[name] = Segment.adopt(info.segment, self._manifest)
                self._entries[name] = info
            except SegmentNotFound:
                continue  # swept or lost: drop the entry, the catalog is rewritten below
        self._save_catalog()

    def remove_orphans(self) -> list[str]:
        """Unlink segments this run's manifest lists but no catalog entry names."""
        live = {i.segment for i in self._entries.values()}
        orphans = [n for n in self._manifest.names() if n not in live]
        for name in orphans:
            unlink_segment(name)
            self._manifest.remove(name)
        return orphans


def _read_into(path: str, seg: Segment, size: int) -> None:
    with open(path, "rb", buffering=0) as f:
        view, done = seg.buf, 0
        while done < size:
            n = f.readinto(view[DATA_OFFSET + done:DATA_OFFSET + size])
            if not n:
                raise InvalidArgument(f"{path} shrank while being published ({done} of {size} bytes read)",
                                      hint="publish files that are not being written to")
            done += n


def _read_catalog(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # never published anything: the goal (no file) holds


class _Mapped:
    """A reader's mapping of one version and the view handed out for it."""

    def __init__(self, info: ContextInfo, seg: Segment, view: np.ndarray | memoryview) -> None:
        self.info, self.segment, self.view = info, seg, view


class ContextReader:
    """Agent side: read-only, zero-copy views of the contexts published in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.catalog_path = os.path.join(os.fspath(state_dir), CATALOG_FILE)
        self._signature: tuple[int, int, int] | None = None
        self._entries: dict[str, ContextInfo] = {}
        self._mapped: dict[str, _Mapped] = {}

    def array(self, name: str) -> np.ndarray:
        """The current version as a read-only ndarray over shared memory (no copy)."""
        view = self._view(name, "array")
        assert isinstance(view, np.ndarray)
        return view

    def bytes(self, name: str) -> memoryview:
        """The current version of a blob as a read-only memoryview (no copy)."""
        view = self._view(name, "bytes")
        assert isinstance(view, memoryview)
        return view

    def version(self, name: str) -> int:
        return self.info(name).version

    def info(self, name: str) -> ContextInfo:
        self._refresh()
        if name not in self._entries:
            raise ContextNotFound(f"no context named {name!r} is published in {self.catalog_path}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._refresh()
        return sorted(self._entries)

    def close(self) -> None:
        """Drop this reader's mappings; ones still pinned by your views go with the views."""
        self._mapped.clear()

    def __enter__(self) -> ContextReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps -----------------------------------------------------------------------
    def _view(self, name: str, kind: str) -> np.ndarray | memoryview:
        info = self.info(name)
        mapped = self._mapped.get(name)
        if mapped is None or mapped.info != info:
            mapped = self._map_current(name)
        if mapped.info.kind != kind:
            raise InvalidArgument(f"context {name!r} is {mapped.info.kind}, not {kind}",
                                  hint=f"use ContextReader.{mapped.info.kind}({name!r})")
        return mapped.view

    def _map_current(self, name: str) -> _Mapped:
        """Attach the catalog's version; on a race re-read the catalog and try once more."""
        for _ in range(2):
            info = self._entries.get(name)
            mapped = _attach(info) if info is not None else None
            if mapped is not None:
                self._mapped[name] = mapped  # an old mapping is dropped, not closed (views pin it)
                return mapped
            self._refresh(force=True)
        raise ContextNotFound(f"context {name!r} was replaced or removed twice while attaching it",
                              hint="it is being republished rapidly or was removed; try again")

    def _refresh(self, force: bool = False) -> None:
        try:
            st = os.stat(self.catalog_path)
        except FileNotFoundError:
            self._signature, self._entries = None, {}
            return
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if force or signature != self._signature:
            catalog = _read_catalog(self.catalog_path)
            self._entries = {n: ContextInfo.from_json(d) for n, d in catalog.get("entries", {}).items()}
            self._signature = signature


def _attach(info: ContextInfo) -> _Mapped | None:
    """Map one version; None if its segment is gone or holds something else (a race)."""
    try:
        seg = Segment.attach(info.segment, readonly=True)
    except SegmentNotFound:
        return None
    header = _read_header(seg)
    if header is None or header.get("name") != info.name or header.get("version") != info.version:
        seg.close()
        return None
    return _Mapped(info, seg, _make_view(info, seg))


def _make_view(info: ContextInfo, seg: Segment) -> np.ndarray | memoryview:
    if info.kind == "bytes":
        return memoryview(seg.mmap)[DATA_OFFSET:DATA_OFFSET + info.nbytes]
    dtype, shape = info.dtype, info.shape or ()
    assert dtype is not None
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(seg.mmap, dtype, count, DATA_OFFSET).reshape(shape)
