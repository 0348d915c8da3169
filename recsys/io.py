"""File access for any artifact URI (local paths, file://, hdfs://, s3a://).

Through ``pyarrow.fs``, so the same code works on a laptop and on a cluster without
assuming that executors share the driver's disk: the small things on the driver
(manifests, pointers, checksums, listing, atomic renames), artifact reads on the workers,
and the part files the scoring workers write (:mod:`recsys.publish.parts`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import pyarrow as pa

_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}
_CHUNK = 8 << 20
#: What to set when pyarrow's HDFS filesystem cannot load a native library (its error
#: then lists every path the loader tried, one line each).
_LIBRARY_HINTS = {
    "Unable to load libjvm": "set JAVA_HOME to the JDK's directory",
    "Unable to load libhdfs": "set ARROW_LIBHDFS_DIR (or HADOOP_HOME) to where Hadoop's "
                              "libhdfs.so is",
}


class ArtifactIOError(OSError):
    """A file or directory under an artifact URI could not be read or written."""


class StorageFullError(ArtifactIOError):
    """A write failed for a full disk or an exhausted quota; the message says where."""


class StorageRefusedError(ArtifactIOError):
    """The filesystem refused the job in the middle of its work (read-only, or no
    permission there): e.g. remounted read-only, or its permissions changed, after the
    check before the work passed. The message says where."""


#: A full disk or an exhausted quota, as Python says it (errno), as the JVM does (the C
#: library's text in a java.io.IOException) and as HDFS does (its quota exceptions).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|"
                        r"\b(?:NSQuota|DSQuota|Quota)ExceededException|DiskOutOfSpaceException")
_WRITING = re.compile(r"writing rows to (\S+?)\.?(?:\s|$)")  # Spark's TASK_WRITE_FAILED
#: What a Python worker said with one of this module's errors (its traceback comes back
#: to the driver as text): the place, which the driver's own errors do not know.
_SAID = {kind: re.compile(rf"recsys\.io\.{kind.__name__}: (.+)")
         for kind in (StorageFullError, StorageRefusedError)}
#: A filesystem refusing a job: read-only, or no permission (the kernel's errno and the
#: C library's text, as Python, pyarrow and the JVM say it).
_REFUSED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_REFUSED_TEXT = re.compile(r"Read-only file system|Permission denied|Operation not permitted")
#: Where, as pyarrow ('…'), the JVM (java.io and java.nio) and Hadoop name the file.
_REFUSED_PLACE = re.compile(
    r"(?:local file|(?:file|directory|rename)) '([^']+)'"
    r"|(?:FileNotFoundException|AccessDeniedException|FileSystemException): (/[^\s:]+)"
    r"|Mkdirs failed to create (\S+)")
_MKDIRS = "Mkdirs failed to create"  # Hadoop's local filesystem, which does not say why
#: A Java stack through Spark's shuffle, spill or block files: its scratch (spark.local.dir).
_SPARK_SCRATCH = re.compile(
    r"org\.apache\.spark\.(?:storage\.Disk|shuffle\.|util\.collection\.(?:Spillable|"
    r"ExternalSorter|unsafe\.sort\.Unsafe))")


def error_chain(exc: BaseException, *, include: Callable[[BaseException], bool] = lambda e: True
                ) -> Iterator[tuple[BaseException, str]]:
    """``exc`` and the errors it was raised from or while handling, each once, nearest
    first, with its text ("" when it has none to give: a Py4JJavaError asks the JVM for
    its stack, and the JVM may be gone). Not past an error raised ``from None`` while
    handling another (it has said it on purpose), nor into one ``include`` refuses."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not include(e):
            continue
        seen.add(id(e))
        try:
            text = str(e)
        except Exception:  # noqa: BLE001
            text = ""
        yield e, text
        todo += [e.__cause__, None if e.__suppress_context__ else e.__context__]


def _not_the_projects(e: BaseException) -> bool:
    """The project's own errors say what happened themselves (these two: where)."""
    return isinstance(e, (StorageFullError, StorageRefusedError)) or \
        type(e).__module__.partition(".")[0] != "recsys"


def storage_full(exc: BaseException, *, writing: str | None = None,
                 places: str | None = None, spark_scratch: str | None = None) -> str | None:
    """Why ``exc`` failed, when it (or an error it was raised from or while handling,
    unless raised ``from None``) is a full disk or an exhausted quota: e.g. "no space
    left on device writing <place>", the place as an error names it, else Spark's scratch
    directory (``spark_scratch``, where the JVM's stack shows shuffle or spill files),
    else ``writing``; when none says, ``places`` lists where the job writes. ``None`` for
    any other failure, and for the project's own errors, which say what happened
    themselves."""
    found = where = None
    scratch = False
    for e, text in error_chain(exc, include=_not_the_projects):
        if isinstance(e, StorageFullError):
            return str(e)  # said already, with the place
        if (m := _SAID[StorageFullError].search(text)) is not None:
            return m.group(1)  # by a Python worker
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            found = found or os.strerror(e.errno)
            where = where or e.filename
        elif (m := _FULL_TEXT.search(text)) is not None:
            found = found or m.group(0)
        if where is None and (m := _WRITING.search(text)) is not None:
            where = m.group(1)
        scratch = scratch or _SPARK_SCRATCH.search(text) is not None
    if found is None:
        return None
    reason = _lower(found)
    if where is None and scratch:
        where = (f"Spark's scratch directory{' ' + spark_scratch if spark_scratch else ''} "
                 "(shuffle and spill files; spark.scratch_dir for local masters, else "
                 "spark.local.dir or SPARK_LOCAL_DIRS)")
    where = where or writing
    if where:
        return f"{reason} writing {where}"
    return reason + (f" (the job writes {places})" if places else "")


def storage_refused(exc: BaseException, *, writing: str | None = None) -> str | None:
    """Why ``exc`` failed, when it (or an error it was raised from or while handling,
    unless raised ``from None``) is the filesystem refusing the job: e.g. "read-only file
    system at <place>", the place as the error names it (Spark's task directories cut
    off), else ``writing``; an error known only by its text must name a file. Hadoop's
    "Mkdirs failed to create" gives no reason: a local place is then looked at (read-only,
    or not writable for this process). ``None`` for any other failure, and for the
    project's own errors, which say what happened themselves."""
    for e, text in error_chain(exc, include=_not_the_projects):
        if isinstance(e, StorageRefusedError):
            return str(e)
        if (m := _SAID[StorageRefusedError].search(text)) is not None:
            return m.group(1)  # by a Python worker
        reason = place = None
        if isinstance(e, OSError) and e.errno in _REFUSED_ERRNOS:
            reason, place = os.strerror(e.errno), e.filename
        elif (m := _REFUSED_TEXT.search(text)) is not None:
            reason = m.group(0)
        elif _MKDIRS not in text:
            continue
        if place is None and (m := _REFUSED_PLACE.search(text)) is not None:
            place = next(g for g in m.groups() if g)
        if place is None and not isinstance(e, OSError):
            continue  # words in a text, with no file: not enough to say it
        if place is not None:
            place = os.fspath(place).split("/_temporary/")[0]  # a Spark task's attempt
        reason = reason or (_refusal(place) if place else None)
        if reason is None:
            continue
        where = place or writing
        return _lower(reason) + (f" at {where}" if where else "")
    return None


def _refusal(place: str) -> str | None:
    """Why a local ``place`` cannot be written now, as the C library says it: its
    filesystem is mounted read-only, or this process may not write its nearest existing
    directory; None when it can (or the place is not local)."""
    try:
        path = existing_ancestor(local_path(place))
    except ArtifactIOError:
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    except OSError:
        return None
    return None if os.access(path, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


def existing_ancestor(path: str) -> str:
    """``path`` (made absolute) if it exists, else its nearest directory above that does:
    a place not made yet will be on that one's filesystem."""
    at = os.path.abspath(path)
    while not os.path.exists(at) and os.path.dirname(at) != at:
        at = os.path.dirname(at)
    return at


def _lower(reason: str) -> str:
    """ "No space left on device" -> "no space left on device"; acronyms stay."""
    return reason[0].lower() + reason[1:] if reason[:1].isupper() and reason[1:2].islower() \
        else reason


def storage_error(exc: BaseException, *, writing: str | None = None,
                  places: str | None = None, spark_scratch: str | None = None
                  ) -> ArtifactIOError | None:
    """``exc`` as a :class:`StorageFullError` or a :class:`StorageRefusedError` saying
    where (:func:`storage_full`, :func:`storage_refused`; ``exc`` itself when it is one
    already); None when ``exc`` is neither."""
    if isinstance(exc, (StorageFullError, StorageRefusedError)):
        return exc
    full = storage_full(exc, writing=writing, places=places, spark_scratch=spark_scratch)
    if full is not None:
        return StorageFullError(full)
    refused = storage_refused(exc, writing=writing)
    return None if refused is None else StorageRefusedError(refused)


@contextmanager
def names_storage_errors(target: str) -> Iterator[None]:
    """A full disk or a refusal met inside is raised as :class:`StorageFullError` or
    :class:`StorageRefusedError` naming ``target`` where the error does not say (pyarrow's
    and Python's write errors do not say which file they were writing)."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, writing=target)
        if error is None or error is exc:
            raise
        raise error from exc


def _file_path(text: str) -> str:
    """The path of a ``file:`` URI, taken literally: a local directory may be named
    ``run #2`` or ``what?``, which a URI parser would cut at ``#`` or ``?`` (Spark and
    Hadoop take them literally too). ``file:/x``, ``file:///x`` and ``file://host/x``
    name ``/x``."""
    rest = text[len("file:"):]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):  # an authority (file://localhost/x)
            rest = "/" + rest.partition("/")[2]
    return rest


def normalize_uri(path: str | os.PathLike[str]) -> str:
    """A scheme-less path becomes an absolute ``file://`` URI; URIs are kept as they are.
    Local paths are taken literally, ``#``, ``?`` and ``%`` included."""
    text = os.fspath(path)
    if text.startswith("file:"):
        return "file://" + os.path.abspath(_file_path(text))
    parsed = urlparse(text)
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is not a scheme
        return text if parsed.path in ("", "/") else text.rstrip("/")
    return "file://" + os.path.abspath(text)


def is_local(uri: str) -> bool:
    return normalize_uri(uri).startswith("file://")


def local_path(uri: str) -> str:
    """The filesystem path of a ``file://`` URI (error for remote URIs)."""
    norm = normalize_uri(uri)
    if not norm.startswith("file://"):
        raise ArtifactIOError(f"{uri} is not a local path")
    return _file_path(norm)


def same_place(a: str, b: str) -> bool:
    """Whether two URIs name one directory, written as Spark and a catalog write them
    (``file:/x`` for ``file:///x``; ``hdfs:///x``, the default namenode, for
    ``hdfs://nn:8020/x``; percent-encoded or not; a local one through a symbolic link or
    not)."""
    na, nb = normalize_uri(a), normalize_uri(b)
    if is_local(na) or is_local(nb):
        if not (is_local(na) and is_local(nb)):
            return False
        here, there = _file_path(na), _file_path(nb)
        if here == there or unquote(here) == unquote(there):
            return True
        # one directory by two names (a symbolic link on the way): the same place
        return any(os.path.realpath(x) == os.path.realpath(y) for x, y in
                   ((here, there), (unquote(here), there), (here, unquote(there))))
    pa_, pb = urlparse(na), urlparse(nb)
    if pa_.scheme != pb.scheme or (pa_.netloc and pb.netloc and pa_.netloc != pb.netloc):
        return False
    here, there = posixpath.normpath(pa_.path or "/"), posixpath.normpath(pb.path or "/")
    return here == there or unquote(here) == unquote(there)


def join(uri: str, *parts: str) -> str:
    base = normalize_uri(uri)
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    norm = normalize_uri(uri)
    if norm.startswith("file://"):
        return pafs.LocalFileSystem(), _file_path(norm)
    parsed = urlparse(norm)
    scheme = _SCHEME_ALIASES.get(parsed.scheme, parsed.scheme)
    target = norm.replace(parsed.scheme + "://", scheme + "://", 1)
    try:
        return pafs.FileSystem.from_uri(target)
    except Exception as exc:  # pyarrow raises several types for unsupported schemes
        raise ArtifactIOError(f"cannot open a filesystem for {uri}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The first line of a filesystem error, with what to set when it is a library that
    could not be loaded (the lines after it list the paths tried)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    first = lines[0]
    hint = next((h for key, h in _LIBRARY_HINTS.items() if first.startswith(key)), None)
    return f"{first}: {hint}" if hint else str(exc)


def strerror(exc: OSError) -> str:
    """The filesystem's reason, e.g. "Permission denied", without the path that pyarrow
    repeats around it (for this module's own errors, of the error they were raised from)."""
    if isinstance(exc, ArtifactIOError) and isinstance(exc.__cause__, OSError):
        return strerror(exc.__cause__)
    if exc.errno:
        return os.strerror(exc.errno)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def size(uri: str) -> int:
    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise ArtifactIOError(f"not a file: {uri}")
    return int(info.size)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise ArtifactIOError(f"file not found: {uri}") from None


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def read_head(uri: str, nbytes: int = 64 << 10) -> bytes:
    """The first ``nbytes`` of a file (enough to check a header line)."""
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read(nbytes)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; local files are written to a temporary name and renamed."""
    fs, path = _fs(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with names_storage_errors(uri):
            try:
                with fs.open_output_stream(tmp) as out:
                    out.write(data)
                os.replace(tmp, path)
            except BaseException:  # e.g. a full disk: no half-written temporary file is left
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                raise
    else:
        with names_storage_errors(uri), fs.open_output_stream(path) as out:
            out.write(data)


def open_output(uri: str) -> "pa.NativeFile":
    """A writable stream to a new file (its directory is created); the caller closes it.
    Used by the Python workers that write a table's part files (:mod:`recsys.publish.parts`)."""
    fs, path = _fs(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    return fs.open_output_stream(path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def check_writable(uri: str) -> None:
    """Write and remove an empty file in the directory ``uri``, so that a job finds out
    before its work, not after, that it cannot keep the result. The directories it had to
    make for that are removed again (if still empty): a job that stops next, e.g. because
    Spark cannot start, leaves nothing. Raises the filesystem's OSError (a full disk as
    :class:`StorageFullError`)."""
    fs, path = _fs(uri)
    made = []  # the missing directories, deepest first
    at = path.rstrip("/") or "/"
    while fs.get_file_info(at).type == pafs.FileType.NotFound and posixpath.dirname(at) != at:
        made.append(at)
        at = posixpath.dirname(at)
    try:
        probe = join(uri, f".write-check-{uuid.uuid4().hex}")
        makedirs(uri)
        write_bytes(probe, b"")
        delete(probe)
    finally:
        for directory in made:
            try:
                if not fs.get_file_info(pafs.FileSelector(directory)):  # another job's now
                    fs.delete_dir(directory)
            except OSError:
                break  # not made, or not ours to remove


def makedirs(uri: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    """Delete a file or a directory tree; nothing to delete is not an error."""
    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """Rename within one filesystem (atomic for a directory on HDFS and local disks)."""
    fs, src_path = _fs(src)
    _, dst_path = _fs(dst)
    fs.create_dir(posixpath.dirname(dst_path), recursive=True)
    fs.move(src_path, dst_path)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _renameat2_exchange(a: str, b: str) -> bool:
    """Swap two local paths in one ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem can't exchange
        return False
    raise OSError(err, os.strerror(err), a)


def exchange(a: str, b: str) -> bool:
    """Atomically swap two existing entries of one local filesystem.

    Returns False when that cannot be done atomically here (a remote filesystem, a
    non-Linux system, a filesystem without ``RENAME_EXCHANGE``); nothing is changed then.
    """
    if not (is_local(a) and is_local(b)):
        return False
    return _renameat2_exchange(local_path(a), local_path(b))


@dataclass(frozen=True)
class FileEntry:
    uri: str
    relpath: str
    size: int


def list_files(uri: str) -> list[FileEntry]:
    """Every file below a directory (recursively), sorted by relative path."""
    fs, path = _fs(uri)
    base = normalize_uri(uri).rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    out = []
    for info in infos:
        if info.type == pafs.FileType.File:
            rel = posixpath.relpath(info.path, path)
            out.append(FileEntry(uri=f"{base}/{rel}", relpath=rel, size=int(info.size)))
    return sorted(out, key=lambda e: e.relpath)


def list_dir(uri: str) -> list[str]:
    """Names directly inside a directory (files and directories), sorted."""
    fs, path = _fs(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos)


def md5(uri: str) -> str:
    fs, path = _fs(uri)
    digest = hashlib.md5()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_to_local(uri: str, dest: str) -> str:
    """Copy a file or a directory tree to a local path (release zips on remote storage,
    artifact directories)."""
    fs, path = _fs(uri)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if entry.type == pafs.FileType.Directory:  # copy_files makes no directories
                os.makedirs(os.path.join(dest, posixpath.relpath(entry.path, path)),
                            exist_ok=True)
        os.makedirs(dest, exist_ok=True)
    pafs.copy_files(path, os.path.abspath(dest), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return dest


def copy_from_local(src: str, uri: str) -> None:
    """Copy a local file or directory tree to a URI (a directory lands *as* ``uri``)."""
    fs, path = _fs(uri)
    # pyarrow creates the destination only for sub-directories: a flat directory's files
    # need ``uri`` itself to exist
    with names_storage_errors(uri):
        fs.create_dir(path if os.path.isdir(src) else posixpath.dirname(path), recursive=True)
        pafs.copy_files(os.path.abspath(src), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)


# ---------------------------------------------------------------------------- Parquet


def parquet_parts(uri: str) -> list[str]:
    """The data files of a Parquet dataset directory (or the file itself), sorted."""
    if is_file(uri):
        return [normalize_uri(uri)]
    parts = [e.uri for e in list_files(uri)
             if e.relpath.endswith(".parquet") and not posixpath.basename(e.relpath).startswith(("_", "."))]
    if not parts:
        raise ArtifactIOError(f"no Parquet files under {uri}")
    return parts


def parquet_schema(uri: str) -> "pa.Schema":
    """The Arrow schema of a Parquet file (its footer only)."""
    import pyarrow.parquet as pq

    fs, path = _fs(uri)
    with fs.open_input_file(path) as handle:
        return pq.read_schema(handle)


def read_parquet(uri: str, columns: list[str] | None = None) -> "pa.Table":
    """A whole Parquet dataset (directory or file) as one Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for part in parquet_parts(uri):
        fs, path = _fs(part)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def iter_parquet(uri: str, columns: list[str], batch_rows: int) -> Iterator["pa.RecordBatch"]:
    """Record batches of at most ``batch_rows`` rows from one Parquet file, streaming."""
    import pyarrow.parquet as pq

    fs, path = _fs(uri)
    with fs.open_input_file(path) as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns)


def write_parquet(table: "pa.Table", uri: str) -> None:
    import pyarrow.parquet as pq

    fs, path = _fs(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    pq.write_table(table, path, filesystem=fs)


def local_copy(uri: str, dest: str) -> str:
    """A local path holding the file or directory tree at ``uri``: the path itself when
    ``uri`` is local, else a copy under ``dest``."""
    if is_local(uri):
        return local_path(uri)
    fs, path = _fs(uri)
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, posixpath.basename(path.rstrip("/")))
    pafs.copy_files(path, target, source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return target
