"""The bytes of one submission: the file on disk, and what comes out of its gzip or zip wrapper.

``open_input(path, limits)`` opens the file once (following a symlink given as the input path —
it is only ever read), refuses it if it is not a regular file or is over ``max_bytes``, hashes it
in one pass (``InputFile.digest``: hex sha256 of the bytes as received) and keeps the descriptor,
so every later read sees the same file even if the path is renamed or replaced meanwhile. Reads
use ``os.pread`` at their own offsets, so passes never disturb each other, and never go past the
size seen at open.

The format comes from the file's suffixes: ``x.csv``, ``x.parquet``, ``x.jsonl``/``x.ndjson``,
optionally wrapped as ``x.csv.gz`` (format from the inner suffix) or in a ``.zip`` holding
exactly one data file (format from that member's suffix). Archives are never extracted by name:
a member is streamed from the open archive into the reader. Refused, naming the member: more
entries than ``max_members``, a member name with ``..``, an absolute or drive path, a NUL byte, a
symlink member, an encrypted member, a nested archive, any second file.

Decompressed bytes are counted as they stream (``InflatingStream``): past ``max_uncompressed_bytes``
or past ``max_compression_ratio`` times the compressed bytes read so far, reading stops with
``UnreadableFile``. A zip member's declared sizes are checked against both caps before it is
opened; ``zipfile`` never inflates a member past its declared size (it fails the CRC instead) nor
reads past its declared compressed size, so a member that lies is refused as corrupt.

User-supplied names (the path's name, a display name, member names) are display metadata only:
the exchange stores data under digests, so no name can make it write outside its store.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from databright.datasets.limits import RATIO_GRACE_BYTES, MiB, ReadLimits
from databright.errors import UnreadableFile

Kind = Literal["csv", "parquet", "jsonl"]
Compression = Literal["gzip", "zip"]

DATA_SUFFIXES: dict[str, Kind] = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ARCHIVE_SUFFIXES = frozenset(
    {
        ".zip",
        ".gz",
        ".tgz",
        ".tar",
        ".bz2",
        ".tbz2",
        ".xz",
        ".txz",
        ".zst",
        ".lz4",
        ".lzma",
        ".7z",
        ".rar",
        ".z",
    }
)
ACCEPTED = ".csv, .jsonl/.ndjson or .parquet, optionally as .gz or alone in a .zip"
_BLOCK = 1 * MiB
_DRIVE = re.compile(r"^[A-Za-z]:")


class InputView(io.RawIOBase):
    """A read-only view of an open descriptor with its own offset, capped at the size seen at open."""

    def __init__(self, fd: int, size: int, name: str, *, digest: str | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._name = name
        self._pos = 0
        self.bytes_read = 0
        # A sequential pass (plain or gzip input) re-hashes what it reads, so ``verify_whole``
        # can prove the rows came from exactly the bytes that ``digest`` names.
        self._expected = digest
        self._hash = hashlib.sha256() if digest is not None else None
        self._hashed_to = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        try:
            data = os.pread(self._fd, want, self._pos)
        except OSError as exc:
            raise UnreadableFile(
                f"{self._name}: reading failed: {exc}; check the disk and submit again"
            ) from exc
        n = len(data)
        buffer[:n] = data
        if self._hash is not None and self._pos == self._hashed_to:
            self._hash.update(data)
            self._hashed_to += n
        self._pos += n
        self.bytes_read += n
        return n

    def verify_whole(self) -> None:
        """After a sequential pass: the bytes read must be the whole file that was digested at open."""
        if self._hash is None:
            return
        if self._hashed_to != self._size or self._hash.hexdigest() != self._expected:
            raise UnreadableFile(
                f"{self._name} changed while it was being read; submit it again once nothing is writing it",
                file=self._name,
            )


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class InflatingStream(io.RawIOBase):
    """Decompressed bytes from ``inner``, refused past the size or ratio cap as they stream."""

    def __init__(self, inner: _Readable, raw: InputView, *, name: str, limits: ReadLimits) -> None:
        super().__init__()
        self._inner = inner
        self._raw = raw
        self._start = raw.bytes_read
        self._name = name
        self._limits = limits
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._inner.read(len(buffer))
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            why = str(exc) or type(exc).__name__
            raise UnreadableFile(
                f"{self._name}: the compressed data is corrupt or truncated ({why}); compress the file "
                "again and submit it",
                file=self._name,
            ) from exc
        n = len(data)
        buffer[:n] = data
        self.produced += n
        self._check()
        return n

    def _check(self) -> None:
        limits = self._limits
        if self.produced > limits.max_uncompressed_bytes:
            raise UnreadableFile(
                f"{self._name}: decompresses to more than {limits.max_uncompressed_bytes:,} bytes, the cap "
                "(ReadLimits.max_uncompressed_bytes); split the data into smaller files, or raise the cap",
                file=self._name,
                limit="max_uncompressed_bytes",
                produced=self.produced,
            )
        compressed = max(1, self._raw.bytes_read - self._start)
        if self.produced > RATIO_GRACE_BYTES and self.produced > limits.max_compression_ratio * compressed:
            raise UnreadableFile(
                f"{self._name}: {compressed:,} compressed bytes inflated to {self.produced:,} bytes, "
                f"over the compression ratio cap of {limits.max_compression_ratio:g}:1 "
                "(ReadLimits.max_compression_ratio); reading stopped — this looks like a decompression "
                "bomb. If the data is genuine, submit it uncompressed or raise the cap",
                file=self._name,
                limit="max_compression_ratio",
                produced=self.produced,
                compressed=compressed,
            )

    def close(self) -> None:
        self._inner.close()
        super().close()


@dataclass(frozen=True)
class Layout:
    """What the suffixes (and, for a zip, its one member) say the bytes are."""

    kind: Kind
    compression: Compression | None
    member: str | None  # the zip member's name, for display only


def _suffix_kind(name: str, where: str) -> Kind:
    suffix = Path(name).suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        raise UnreadableFile(
            f"{where} is an archive inside an archive ({suffix!r}); nested archives are refused — "
            f"submit the data file itself ({ACCEPTED})",
            file=where,
        )
    if suffix not in DATA_SUFFIXES:
        raise UnreadableFile(
            f"{where}: unknown file type {suffix or '(no suffix)'!r}; submit a {ACCEPTED} file",
            file=where,
        )
    return DATA_SUFFIXES[suffix]


def layout_of(name: str) -> Layout | None:
    """Kind and compression from a file name's suffixes; ``None`` for a zip, whose member decides."""
    suffix = Path(name).suffix.lower()
    if suffix == ".zip":
        return None
    if suffix == ".gz":
        return Layout(kind=_suffix_kind(name[: -len(suffix)], name), compression="gzip", member=None)
    if suffix in ARCHIVE_SUFFIXES:
        raise UnreadableFile(
            f"{name}: {suffix!r} archives are not accepted; submit a {ACCEPTED} file",
            file=name,
        )
    return Layout(kind=_suffix_kind(name, name), compression=None, member=None)


def _hostile(raw_name: str) -> str | None:
    if "\x00" in raw_name:
        return "contains a NUL byte"
    if raw_name.startswith(("/", "\\")) or _DRIVE.match(raw_name):
        return "is an absolute path"
    if ".." in raw_name.replace("\\", "/").split("/"):
        return "climbs out of the archive with '..'"
    return None


def zip_member(archive: zipfile.ZipFile, name: str, limits: ReadLimits) -> zipfile.ZipInfo:
    """The one data member of ``archive``, after refusing anything hostile or over the caps."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise UnreadableFile(
            f"{name} holds {len(infos):,} entries, over the cap of {limits.max_members:,} "
            "(ReadLimits.max_members); zip the one data file alone",
            file=name,
            limit="max_members",
        )
    data: list[zipfile.ZipInfo] = []
    for info in infos:
        shown = info.orig_filename
        why = _hostile(shown)
        if why is None and stat.S_ISLNK(info.external_attr >> 16):
            why = "is a symbolic link"
        if why is None and info.flag_bits & 0x1:
            why = "is encrypted"
        if why is not None:
            raise UnreadableFile(
                f"{name}: member {shown!r} {why}; archives are never extracted by name, but such "
                "members are refused — zip the data file alone, at the top level, without links",
                file=name,
                member=shown,
            )
        if info.is_dir():
            continue
        _suffix_kind(shown, f"{name}: member {shown!r}")
        data.append(info)
    if len(data) != 1:
        found = ", ".join(repr(i.orig_filename) for i in data) or "none"
        raise UnreadableFile(
            f"{name} must hold exactly one data file, found {len(data)} ({found}); zip one {ACCEPTED} file",
            file=name,
        )
    info = data[0]
    where = f"{name}: member {info.orig_filename!r}"
    if info.file_size > limits.max_uncompressed_bytes:
        raise UnreadableFile(
            f"{where} declares {info.file_size:,} bytes uncompressed, over the cap of "
            f"{limits.max_uncompressed_bytes:,} (ReadLimits.max_uncompressed_bytes); split the data or "
            "raise the cap",
            file=name,
            member=info.orig_filename,
            limit="max_uncompressed_bytes",
        )
    if info.file_size > RATIO_GRACE_BYTES and info.file_size > limits.max_compression_ratio * max(
        1, info.compress_size
    ):
        raise UnreadableFile(
            f"{where} declares {info.compress_size:,} compressed bytes inflating to {info.file_size:,}, over "
            f"the compression ratio cap of {limits.max_compression_ratio:g}:1 "
            "(ReadLimits.max_compression_ratio); refused without inflating it — this looks like a "
            "decompression bomb. If the data is genuine, submit it uncompressed or raise the cap",
            file=name,
            member=info.orig_filename,
            limit="max_compression_ratio",
        )
    return info


class InputFile:
    """One submitted file, open, size-checked and digested; see the module docstring."""

    def __init__(self, path: Path, limits: ReadLimits, name: str) -> None:
        self.name = name  # for messages only
        self.path_name = path.name  # its suffixes give the format
        self.limits = limits
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise UnreadableFile(f"{name} does not exist; check the path", file=name) from exc
        except OSError as exc:
            raise UnreadableFile(
                f"{name} cannot be opened ({exc.strerror}); check the path", file=name
            ) from exc
        try:
            self._check_and_digest()
            self.layout = self._layout()
        except BaseException:
            self.close()
            raise

    def _check_and_digest(self) -> None:
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(
                f"{self.name} is not a regular file; submit a {ACCEPTED} file", file=self.name
            )
        self.size = info.st_size
        cap = self.limits.max_bytes
        if self.size > cap:
            raise UnreadableFile(
                f"{self.name} is {self.size:,} bytes, over the submission cap of {cap:,} bytes "
                "(ReadLimits.max_bytes); split it into smaller files and submit each, or raise the cap",
                file=self.name,
                size=self.size,
                limit="max_bytes",
            )
        if self.size == 0:
            raise UnreadableFile(
                f"{self.name}: the file is empty (0 bytes); submit a file with a header and data rows",
                file=self.name,
            )
        raw = InputView(self._fd, self.size, self.name)
        digest = hashlib.sha256()
        while block := raw.read(_BLOCK):
            digest.update(block)
        self.digest = digest.hexdigest()

    def _layout(self) -> Layout:
        layout = layout_of(self.path_name)
        if layout is not None:
            return layout
        with self._open_zip() as archive:
            info = zip_member(archive, self.name, self.limits)
        member = info.orig_filename
        return Layout(kind=DATA_SUFFIXES[Path(member).suffix.lower()], compression="zip", member=member)

    def _open_zip(self, raw: InputView | None = None) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(raw or InputView(self._fd, self.size, self.name))
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise UnreadableFile(
                f"{self.name} is not a readable zip archive ({exc}); zip the data file again", file=self.name
            ) from exc

    def stream(self) -> tuple[io.BufferedReader, InputView]:
        """A fresh sequential stream of the payload's bytes (decompressed, bounded) and its raw file.

        Call ``raw.verify_whole()`` after reading the stream to its end (plain and gzip inputs).
        """
        layout = self.layout
        if layout.compression is None:
            raw = InputView(self._fd, self.size, self.name, digest=self.digest)
            return io.BufferedReader(raw, buffer_size=_BLOCK), raw
        if layout.compression == "gzip":
            import gzip

            raw = InputView(self._fd, self.size, self.name, digest=self.digest)
            inflating = InflatingStream(gzip.GzipFile(fileobj=raw), raw, name=self.name, limits=self.limits)
            return io.BufferedReader(inflating, buffer_size=_BLOCK), raw
        raw = InputView(self._fd, self.size, self.name)
        archive = self._open_zip(raw)
        info = zip_member(archive, self.name, self.limits)
        try:
            member = archive.open(info)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
            archive.close()
            raise UnreadableFile(
                f"{self.name}: member {info.orig_filename!r} cannot be opened ({exc}); zip the data file "
                "again with plain deflate",
                file=self.name,
                member=info.orig_filename,
            ) from exc
        # The member keeps a reference to the archive's file; closing the stream closes both.
        name = f"{self.name}: member {info.orig_filename!r}"
        inflating = InflatingStream(_ClosingMember(member, archive), raw, name=name, limits=self.limits)
        return io.BufferedReader(inflating, buffer_size=_BLOCK), raw

    def seekable(self) -> tuple[IO[bytes], InputView]:
        """The payload as a seekable file (the input itself, or an anonymous spool of its decompressed
        bytes) and the view whose ``bytes_read`` counts the input read.

        The spool is an unnamed temporary file (no member name ever reaches the disk), filled through
        the same bounded stream, so the caps hold.
        """
        if self.layout.compression is None:
            view = InputView(self._fd, self.size, self.name)
            return io.BufferedReader(view, buffer_size=_BLOCK), view
        stream, view = self.stream()
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
        try:
            with stream:
                while block := stream.read(_BLOCK):
                    spool.write(block)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool, view

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _ClosingMember(io.RawIOBase):
    def __init__(self, member: _Readable, archive: zipfile.ZipFile) -> None:
        super().__init__()
        self._member = member
        self._archive = archive

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._member.read(size)

    def close(self) -> None:
        self._member.close()
        self._archive.close()
        super().close()


def open_input(path: Path, limits: ReadLimits, name: str | None = None) -> InputFile:
    """Open, size-check and digest ``path``; ``name`` (default: the path's name) is for messages only."""
    path = Path(path)
    return InputFile(path, limits, name if name is not None else path.name)
