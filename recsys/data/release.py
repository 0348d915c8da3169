"""Locating a MovieLens release: a directory or the release .zip, local or at a URI.

A zip is extracted once under the artifact root (``_inputs/<name>-<md5>``), so executors
read it from the same place as the driver even when they do not share its disk. Its
``_EXTRACTED`` marker holds the zip's MD5 and when a run last took it (UTC, as run ids
write it): the nightly's retention removes extractions no run needs any more.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import shutil
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from recsys import io
from recsys.data.errors import InputFileError
from recsys.data.layouts import LAYOUTS, Layout, detect_layout, get_layout

#: Where zips are extracted under the artifact root, and the marker of a whole extraction.
INPUTS = "_inputs"
EXTRACTED = "_EXTRACTED"

_RATINGS_FILES = ("ratings.csv", "ratings.dat", "u.data")
#: Every file a known layout reads.
_RELEASE_FILES = frozenset(t.filename for layout in LAYOUTS.values() for t in layout.tables)
#: The directory holding the ``recsys`` package: a checkout's root, where ``data/`` holds the
#: embedded corpus (absent when the package was installed without the repository).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Release:
    #: What the user gave (directory or zip).
    source: str
    #: Directory URI that holds the release files.
    directory: str
    layout: Layout
    #: Canonical table name -> file URI, for the files present.
    files: dict[str, str] = field(default_factory=dict)

    def file(self, table: str) -> str | None:
        return self.files.get(table)

    def checksums(self) -> dict[str, dict[str, Any]]:
        """``{table: {"uri", "size", "md5"}}`` of the release's files, as a preprocess
        run records them (``inputs.files``) and the nightly compares them."""
        def one(item: tuple[str, str]) -> tuple[str, dict[str, Any]]:
            table, uri = item
            return table, {"uri": uri, "size": io.size(uri), "md5": io.md5(uri)}

        with ThreadPoolExecutor(max_workers=2) as pool:
            return dict(pool.map(one, sorted(self.files.items())))


def _zip_release_prefix(archive: zipfile.ZipFile, where: str) -> str:
    for name in archive.namelist():
        if posixpath.basename(name) in _RATINGS_FILES:
            return posixpath.dirname(name)
    raise InputFileError(
        f"{where} holds no MovieLens ratings file ({', '.join(_RATINGS_FILES)})"
    )


def extract_zip(zip_uri: str, work_uri: str) -> str:
    """Extract the release inside ``zip_uri`` under ``work_uri``; returns the directory URI.

    Extraction is skipped when the same zip (by MD5) was already extracted there.
    """
    if not io.is_file(zip_uri):
        raise InputFileError(f"input not found: {zip_uri}")
    checksum = io.md5(zip_uri)
    stem = posixpath.basename(io.normalize_uri(zip_uri))
    stem = stem[:-4] if stem.lower().endswith(".zip") else stem
    target = io.join(work_uri, INPUTS, f"{stem}-{checksum[:12]}")
    if io.is_file(io.join(target, EXTRACTED)):
        _stamp(target, checksum)  # in use again: not to be pruned from under this run
        return target

    with tempfile.TemporaryDirectory(prefix="recsys-zip-") as tmp:
        local_zip = io.local_path(zip_uri) if io.is_local(zip_uri) else io.copy_to_local(
            zip_uri, os.path.join(tmp, "release.zip")
        )
        try:
            archive = zipfile.ZipFile(local_zip)
        except zipfile.BadZipFile:
            raise InputFileError(f"{zip_uri} is not a valid zip file") from None
        with archive:
            prefix = _zip_release_prefix(archive, zip_uri)
            out_dir = os.path.join(tmp, "release")
            os.makedirs(out_dir)
            for info in archive.infolist():
                if info.is_dir() or posixpath.dirname(info.filename) != prefix:
                    continue
                dest = os.path.join(out_dir, posixpath.basename(info.filename))
                try:
                    with archive.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, 8 << 20)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    # a damaged member (bad CRC, broken deflate stream, cut short) or a
                    # compression method Python cannot read
                    raise InputFileError(
                        f"{zip_uri}: cannot extract {info.filename} ({exc}); the archive is "
                        "damaged: download the release again (its MD5 is published beside "
                        "it), or give the extracted directory") from None
                except OSError as exc:  # a full disk, a quota, a file-size limit
                    raise InputFileError(
                        f"{zip_uri}: cannot write {info.filename} to the temporary directory "
                        f"{tmp} ({exc.strerror or exc}); free space there (or point TMPDIR "
                        "elsewhere), or give the extracted directory") from None
        io.delete(target)
        try:
            if io.is_local(target):
                os.makedirs(os.path.dirname(io.local_path(target)), exist_ok=True)
                shutil.move(out_dir, io.local_path(target))
            else:
                io.copy_from_local(out_dir, target)
        except OSError as exc:
            io.delete(target)  # never leave half a release where the next run would look
            raise InputFileError(
                f"{zip_uri}: cannot put the extracted release at {target} "
                f"({exc.strerror or exc}); free space under the artifact root, or give the "
                "extracted directory") from None
    _stamp(target, checksum)
    return target


def _stamp(target: str, checksum: str) -> None:
    io.write_text(io.join(target, EXTRACTED),
                  f"{checksum} {dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}\n")


def extracted_at(marker: str) -> str:
    """When a run last took an extraction, from its marker's text (``YYYYmmddTHHMMSSZ``),
    or "" for a marker written before markers said it."""
    fields = marker.split()
    return fields[1] if len(fields) > 1 else ""


def _relative_hint(source: str) -> str:
    """For a relative local path that is not there: where it was looked for, and the
    project's own copy when the checkout has one (the embedded corpus, run from elsewhere)."""
    if "://" in source or os.path.isabs(source):
        return ""
    hint = f"; a relative path is read from the current directory, {os.getcwd()}"
    own = os.path.join(PROJECT_ROOT, source)
    if os.path.exists(own):
        hint += f"; the project's copy is {own}"
    return hint


def _check_readable(uri: str, what: str, read):  # noqa: ANN001, ANN202
    """``read(uri)``, an OSError (permissions, an unreadable mount) said as an input error."""
    try:
        return read(uri)
    except OSError as exc:
        raise InputFileError(f"cannot read {what} ({io.strerror(exc)}): give this job read "
                             "access to the release, or a copy it can read") from None


def check_input(source: str) -> str:
    """The URI of ``source`` when it names a directory or a ``.zip``; otherwise the error
    :func:`open_release` gives, without reading or extracting anything (the jobs call it
    before their SparkSession starts)."""
    source_uri = io.normalize_uri(source)
    try:
        io.exists(source_uri)
    except io.ArtifactIOError as exc:  # a scheme with no filesystem, an unreachable cluster
        hint = ("; a release on a web server is not read in place: download it first (e.g. "
                "jobs/download_movielens.py) and give the local .zip"
                if source_uri.lower().startswith(("http://", "https://")) else "")
        raise InputFileError(f"input {source}: {exc}{hint}") from None
    if io.is_dir(source_uri) and not source_uri.lower().endswith(".zip"):
        names = _check_readable(source_uri, source, io.list_dir)
        for name in sorted(set(names) & _RELEASE_FILES):
            _check_readable(io.join(source_uri, name), f"{name} in {source}",
                            lambda uri: io.read_head(uri, 1))
        return source_uri
    if io.is_file(source_uri):
        if source_uri.lower().endswith(".zip"):
            _check_readable(source_uri, source, lambda uri: io.read_head(uri, 1))
            return source_uri
        raise InputFileError(
            f"input is a file, not a release: {source} (give the directory that holds the "
            f"release's files, e.g. {posixpath.dirname(source.rstrip('/')) or '.'}, or the "
            "release's .zip)"
        )
    raise InputFileError(
        f"input not found: {source} (give a MovieLens release directory or its .zip"
        f"){_relative_hint(source)}"
    )


def open_release(
    source: str, *, work_uri: str, layout: str = "auto"
) -> Release:
    """Find the release files and their layout; missing required or empty files are errors."""
    source_uri = check_input(source)
    directory = extract_zip(source_uri, work_uri) if source_uri.lower().endswith(".zip") \
        else source_uri

    names = [n for n in io.list_dir(directory) if n != EXTRACTED]
    chosen = detect_layout(names, directory) if layout == "auto" else get_layout(layout)
    files: dict[str, str] = {}
    for spec in chosen.tables:
        uri = io.join(directory, spec.filename)
        if spec.filename not in names:
            if spec.required:
                raise InputFileError(
                    f"required file {spec.filename} is missing in {directory} "
                    f"(layout {chosen.name})"
                )
            continue
        if io.size(uri) == 0:
            raise InputFileError(f"{spec.filename} is empty (0 bytes) in {directory}")
        files[spec.name] = uri
    return Release(source=source_uri, directory=directory, layout=chosen, files=files)
