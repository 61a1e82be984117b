"""Sealed files: dataset version files encrypted at rest with AES-256-GCM, one chunk at a time.

A sealed file is a small header followed by chunks (the STREAM construction of Hoang, Reyhanitabar,
Rogaway and Vizár, "Online authenticated-encryption and its nonce-reuse misuse-resistance")::

    header  = "DBSEAL" ‖ format (u8 = 1) ‖ chunk size (u32) ‖ nonce prefix (8 random bytes)
              ‖ data key id (16 bytes)
    chunk i = AES-GCM(data key, nonce = prefix ‖ i (u32), plaintext[i·size : (i+1)·size],
                      aad = header ‖ sha256(file aad) ‖ last flag (1 byte))

Every chunk holds ``chunk size`` plaintext bytes except the last, which holds the rest (possibly
none: an empty file is one empty chunk). Because the counter is in the nonce, the last-chunk flag
and the header in every chunk's AAD, a reader detects each way a file can be altered: a flipped bit
(the tag fails), swapped or reordered chunks (the counter differs), truncation at a chunk boundary
(the chunk now read last was not sealed as last), appended bytes (the final chunk is followed by
more), an edited header, and a file moved to another dataset, version or path (the caller's AAD
differs). Readers hold one chunk and the next at a time, so memory is bounded by the chunk size,
not the file size; ``open_sealed_to`` writes under a temporary name and renames only after the
final chunk verified, so no partly decrypted file is ever left behind.

Version files. ``seal_version`` (or, before the version is registered, ``seal_version_files``)
seals the files a worker needs from one version folder (its delta ``records.parquet`` and, when
present, its ``withdrawn.parquet``) next to themselves as ``<name>.sealed``, under that version's
data key and the AAD ``version_file_aad(dataset, version, path)``. The sealed copies are the
shards: DVC tracks and pushes them, while ``keep_plaintext_out_of_dvc`` lists the plaintext beside
them in the workspace's ``.dvcignore`` — the DVC cache and remote hold only ciphertext, and the
exchange's own readers (contract, near-duplicates, lineage, audit) keep reading the local plaintext.
A release of version n reads the shards of v1..vn (``version_shards``), so ``open_shards`` takes
the data keys of every version it reads (``KeyService.release`` hands them out together), decrypts
each shard into a private folder and checks it against the registry's digest before anything
trains on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from databright.crypto import canonical_json
from databright.datasets.versions import DatasetVersion, Release
from databright.errors import DatasetError, IntegrityError

MAGIC = b"DBSEAL"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
# A reader allocates one chunk, so the header may not ask for more than this.
MAX_CHUNK_SIZE = 64 << 20
SEALED_SUFFIX = ".sealed"
# The plaintext a version folder keeps beside its sealed shards, for the exchange's own readers.
PLAINTEXT_IGNORE = ("/datasets/*/v*/records.parquet", "/datasets/*/v*/withdrawn.parquet")
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = struct.Struct(">6sBI8s16s")
HEADER_BYTES = _HEADER.size
_MAX_CHUNKS = 1 << 32  # the counter is 32 bits of the 96-bit nonce
_KEY_ID_CONTEXT = b"databright/data-key-id/v1\x00"
_VERSION_FILE = re.compile(r"^datasets/(?P<dataset>[^/]+)/v(?P<version>[1-9][0-9]*)/[^/]+$")


def data_key_id(key: bytes) -> str:
    """A public name for a data key: 32 hex digits of a domain-separated sha256 (reveals nothing)."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:32]


@dataclass(frozen=True)
class DataKey:
    """One version's 256-bit data key, unwrapped. ``to_dict`` and ``repr`` never show the key."""

    dataset: str
    version: int
    key_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise IntegrityError(f"a data key has {KEY_BYTES} bytes, got {len(self.key)}")
        if data_key_id(self.key) != self.key_id:
            raise IntegrityError(
                f"data key of {self.dataset!r} v{self.version} does not match its id {self.key_id}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.version, "key_id": self.key_id}


@dataclass(frozen=True)
class SealedFile:
    """What ``seal_file`` wrote (or ``open_sealed_to`` recovered): sizes and the plaintext digest."""

    path: Path
    plaintext_bytes: int
    sealed_bytes: int
    chunks: int
    chunk_size: int
    key_id: str
    plaintext_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


def _chunk_aad(header: bytes, aad_digest: bytes, last: bool) -> bytes:
    return header + aad_digest + (b"\x01" if last else b"\x00")


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _check_key(data_key: bytes) -> AESGCM:
    if not isinstance(data_key, bytes) or len(data_key) != KEY_BYTES:
        raise IntegrityError(
            f"a data key is {KEY_BYTES} bytes, got {type(data_key).__name__} of length "
            f"{len(data_key) if isinstance(data_key, bytes) else '?'}; pass DataKey.key"
        )
    return AESGCM(data_key)


def _temporary(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")


def seal_file(
    src: Path, dst: Path, data_key: bytes, aad: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> SealedFile:
    """Encrypt ``src`` into ``dst`` (written atomically); ``aad`` names what the file is."""
    if isinstance(chunk_size, bool) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(
            f"chunk size {chunk_size!r} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] bytes; "
            f"use the default {DEFAULT_CHUNK_SIZE}"
        )
    aead = _check_key(data_key)
    key_id = data_key_id(data_key)
    prefix = os.urandom(8)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, chunk_size, prefix, bytes.fromhex(key_id))
    aad_digest = hashlib.sha256(aad).digest()
    plain = hashlib.sha256()
    tmp = _temporary(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    index = total = 0
    try:
        with src.open("rb") as reader, tmp.open("wb") as writer:
            writer.write(header)
            current = reader.read(chunk_size)
            while True:
                # Read one chunk ahead: only then is it known whether this chunk is the last.
                following = reader.read(chunk_size) if len(current) == chunk_size else b""
                last = not following
                if index >= _MAX_CHUNKS:
                    raise IntegrityError(f"{src} needs more than 2^32 chunks; use a larger chunk size")
                writer.write(
                    aead.encrypt(_nonce(prefix, index), current, _chunk_aad(header, aad_digest, last))
                )
                plain.update(current)
                total += len(current)
                index += 1
                if last:
                    break
                current = following
        tmp.replace(dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IntegrityError(f"cannot seal {src} into {dst}: {exc}", file=str(src)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SealedFile(dst, total, dst.stat().st_size, index, chunk_size, key_id, plain.hexdigest())


def read_header(handle: BinaryIO, path: Path) -> tuple[bytes, int, bytes, str]:
    """Parse a sealed file's header: (header bytes, chunk size, nonce prefix, key id)."""
    header = handle.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise IntegrityError(
            f"sealed file {path} is {len(header)} bytes, shorter than its {HEADER_BYTES}-byte header; "
            "the file was truncated — fetch it again from the remote",
            file=str(path),
        )
    magic, fmt, chunk_size, prefix, key_id = _HEADER.unpack(header)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise IntegrityError(
            f"{path} is not a sealed file of format {FORMAT_VERSION} (starts with {header[:7]!r}); "
            "fetch it again from the remote",
            file=str(path),
        )
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(
            f"sealed file {path}: header names chunk size {chunk_size}, outside "
            f"[{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]; the header was altered",
            file=str(path),
        )
    return header, chunk_size, prefix, key_id.hex()


def iter_sealed(path: Path, data_key: bytes, aad: bytes) -> Iterator[bytes]:
    """Yield the plaintext chunks of ``path``; each is authentic, the whole only once exhausted.

    A consumer must not act on the data until the iterator finished without ``IntegrityError``:
    truncation is only detectable at the end. ``open_sealed`` and ``open_sealed_to`` do this.
    """
    aead = _check_key(data_key)
    aad_digest = hashlib.sha256(aad).digest()
    with path.open("rb") as handle:
        header, chunk_size, prefix, key_id = read_header(handle, path)
        if key_id != data_key_id(data_key):
            raise IntegrityError(
                f"sealed file {path} is sealed under data key {key_id}, not {data_key_id(data_key)}; "
                "use the data key released for this file's dataset version",
                file=str(path),
                chunk=None,
            )
        block = chunk_size + TAG_BYTES
        current = handle.read(block)
        index = 0
        while True:
            offset = HEADER_BYTES + index * block
            following = handle.read(block) if len(current) == block else b""
            last = not following
            nonce = _nonce(prefix, index)
            try:
                plaintext = aead.decrypt(nonce, current, _chunk_aad(header, aad_digest, last))
            except InvalidTag:
                raise _diagnose(aead, path, index, offset, current, nonce, header, aad_digest, last) from None
            yield plaintext
            if last:
                return
            if index + 1 >= _MAX_CHUNKS:
                raise IntegrityError(f"sealed file {path} has more than 2^32 chunks", file=str(path))
            current = following
            index += 1


def _diagnose(
    aead: AESGCM,
    path: Path,
    index: int,
    offset: int,
    chunk: bytes,
    nonce: bytes,
    header: bytes,
    aad_digest: bytes,
    last: bool,
) -> IntegrityError:
    """Name what went wrong with chunk ``index``: a cheap second decryption tells the cases apart."""
    where = f"sealed file {path}: chunk {index} (bytes {offset}..{offset + len(chunk)})"
    context: dict[str, Any] = {"file": str(path), "chunk": index}
    try:
        aead.decrypt(nonce, chunk, _chunk_aad(header, aad_digest, not last))
    except InvalidTag:
        return IntegrityError(
            f"{where} fails authentication: its bytes were altered, chunks were reordered or swapped, "
            "or the file is opened as another dataset, version or path (wrong AAD); fetch it again "
            "from the remote and open it with the AAD it was sealed with",
            **context,
        )
    if last:
        return IntegrityError(
            f"{where} is the last chunk present but was not sealed as the final one: the file is "
            "truncated; fetch it again from the remote",
            **context,
        )
    return IntegrityError(
        f"{where} was sealed as the final chunk but more bytes follow it: data was appended; fetch "
        "the file again from the remote",
        **context,
    )


def open_sealed(path: Path, data_key: bytes, aad: bytes) -> bytes:
    """The whole plaintext of a sealed file (for small files; ``open_sealed_to`` streams)."""
    return b"".join(iter_sealed(path, data_key, aad))


def open_sealed_to(path: Path, dst: Path, data_key: bytes, aad: bytes) -> SealedFile:
    """Decrypt ``path`` into ``dst`` one chunk at a time; ``dst`` appears only if all of it verified."""
    plain = hashlib.sha256()
    tmp = _temporary(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    total = chunks = 0
    try:
        with tmp.open("wb") as writer:
            for chunk in iter_sealed(path, data_key, aad):
                writer.write(chunk)
                plain.update(chunk)
                total += len(chunk)
                chunks += 1
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with path.open("rb") as handle:
        _, chunk_size, _, key_id = read_header(handle, path)
    return SealedFile(dst, total, path.stat().st_size, chunks, chunk_size, key_id, plain.hexdigest())


# --- version files ----------------------------------------------------------------------------


def version_file_aad(dataset: str, version: int, path: str) -> bytes:
    """The AAD of one version file: a sealed file opens only as the file it was sealed as."""
    return canonical_json(
        {"dataset": dataset, "version": version, "file": path, "purpose": "databright/version-file/v1"}
    )


def _file_version(dataset: str, rel: str) -> int:
    match = _VERSION_FILE.match(rel)
    if match is None or match["dataset"] != dataset:
        raise DatasetError(
            f"{rel!r} is not a file of a {dataset!r} version folder (datasets/{dataset}/v<n>/<file>); "
            "the registry row is damaged — pull the version again",
            path=rel,
        )
    return int(match["version"])


@dataclass(frozen=True)
class SealedShard:
    """One sealed file a worker reads. ``name`` is its workspace path (``datasets/<d>/v<n>/<file>``),
    which its AAD names, so it opens only as that file; ``path`` is where this copy of it lies."""

    name: str
    path: str  # absolute path of the ``.sealed`` file
    version: int  # the version whose data key sealed it
    sha256: str  # of the plaintext, as the registry records it
    withdrawn: bool = False  # a withdrawal file (record ids), not a delta

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _version_files(version: DatasetVersion) -> list[tuple[str, str, int]]:
    """(path, digest, owning version) of every file a worker reads for ``version``, v1 first."""
    pairs = [*zip(version.data_paths, version.data_digests, strict=True)]
    pairs += zip(version.withdrawn_paths, version.withdrawn_digests, strict=True)
    return [(rel, digest, _file_version(version.dataset, rel)) for rel, digest in pairs]


def version_shards(workspace_dir: Path, version: DatasetVersion) -> tuple[SealedShard, ...]:
    """The sealed shards of ``version`` (deltas of v1..vn, then withdrawal files), each present."""
    n_data = len(version.data_paths)
    shards = []
    for index, (rel, digest, owner) in enumerate(_version_files(version)):
        sealed = (workspace_dir / (rel + SEALED_SUFFIX)).absolute()
        if not sealed.is_file():
            raise IntegrityError(
                f"{sealed} is missing, so {version.dataset!r} v{version.version} cannot be released; pull "
                f"the version (databright.datasets.lineage.pull_version) or seal v{owner} again",
                file=str(sealed),
            )
        shards.append(SealedShard(rel, str(sealed), owner, digest, index >= n_data))
    return tuple(shards)


def keep_plaintext_out_of_dvc(workspace_dir: Path) -> None:
    """Make DVC skip the plaintext beside each sealed shard: its cache and remote hold ciphertext only."""
    path = workspace_dir / ".dvcignore"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    missing = [p for p in PLAINTEXT_IGNORE if p not in text.splitlines()]
    if missing:
        lead = "" if not text or text.endswith("\n") else "\n"
        note = "# databright: dataset shards reach DVC only sealed (trust.sealing); plaintext stays local\n"
        path.write_text(text + lead + note + "".join(f"{p}\n" for p in missing), encoding="utf-8")


@dataclass(frozen=True)
class SealedVersion:
    """The files of one version folder that ``seal_version`` sealed, under which data key."""

    dataset: str
    version: int
    key_id: str
    files: tuple[SealedFile, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "files": [f.to_dict() for f in self.files]}


def seal_version_files(
    workspace_dir: Path, files: Mapping[str, str], data_key: DataKey, *, remove_plaintext: bool = False
) -> SealedVersion:
    """Seal files of ``data_key``'s version folder (workspace path -> sha256) as ``<file>.sealed``.

    For ingest, before the version is registered: pass ``{data_path: data_digest}`` (and the
    withdrawal file) of the ``WrittenVersion``. The digest is checked on the bytes actually sealed,
    so a file that changed since its digest was taken is refused, and nothing of it stays sealed.
    """
    sealed: list[SealedFile] = []
    try:
        for rel, digest in files.items():
            sealed.append(_seal_one(workspace_dir, rel, digest, data_key))
    except BaseException:
        for done in sealed:
            done.path.unlink(missing_ok=True)
        raise
    if remove_plaintext:
        for rel in files:
            (workspace_dir / rel).unlink()
    return SealedVersion(data_key.dataset, data_key.version, data_key.key_id, tuple(sealed))


def _seal_one(workspace_dir: Path, rel: str, digest: str, data_key: DataKey) -> SealedFile:
    if _file_version(data_key.dataset, rel) != data_key.version:
        raise IntegrityError(
            f"{rel} is not in the folder of {data_key.dataset!r} v{data_key.version}, whose data key "
            f"{data_key.key_id} this is; seal each file under its own version's key"
        )
    src = workspace_dir / rel
    if not src.is_file():
        raise IntegrityError(f"{src} is missing; pull the version again before sealing it", file=str(src))
    aad = version_file_aad(data_key.dataset, data_key.version, rel)
    result = seal_file(src, src.with_name(src.name + SEALED_SUFFIX), data_key.key, aad)
    if result.plaintext_sha256 != digest:
        result.path.unlink(missing_ok=True)
        raise IntegrityError(
            f"{src} hashes to {result.plaintext_sha256[:16]}…, the registry says {digest[:16]}…; "
            "refusing to seal altered data — pull the version again",
            file=str(src),
        )
    return result


def seal_version(
    workspace_dir: Path, version: DatasetVersion, data_key: DataKey, *, remove_plaintext: bool = False
) -> SealedVersion:
    """Seal a registered version's own worker files (its delta and withdrawal file)."""
    if (data_key.dataset, data_key.version) != (version.dataset, version.version):
        raise IntegrityError(
            f"data key {data_key.key_id} belongs to {data_key.dataset!r} v{data_key.version}, not "
            f"{version.dataset!r} v{version.version}; ask the key service for this version's key"
        )
    own = {rel: digest for rel, digest, owner in _version_files(version) if owner == version.version}
    return seal_version_files(workspace_dir, own, data_key, remove_plaintext=remove_plaintext)


def open_shards(
    dataset: str, shards: Sequence[SealedShard], keys: Mapping[int, DataKey], out_dir: Path
) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """Decrypt ``shards`` into ``out_dir``, each checked against its digest; the worker side.

    ``keys`` maps each version number to its data key (``KexKeyPair.unwrap_release`` returns
    exactly that). A shard that fails authentication or its registry digest raises
    ``IntegrityError`` naming it, before any of the data is used. Returns (deltas, withdrawal files).
    """
    data: list[Path] = []
    withdrawn: list[Path] = []
    for shard in shards:
        if _file_version(dataset, shard.name) != shard.version:
            raise IntegrityError(
                f"shard {shard.name} is labelled v{shard.version}; a shard is opened under the key of the "
                "version folder it is in — ask the exchange for the version's shard list again"
            )
        key = keys.get(shard.version)
        if key is None or (key.dataset, key.version) != (dataset, shard.version):
            raise DatasetError(
                f"no data key for {dataset!r} v{shard.version}, needed to read {shard.name}; ask the key "
                "service to release the version to this session",
                dataset=dataset,
                version=shard.version,
            )
        sealed = Path(shard.path)
        if not sealed.is_file():
            raise IntegrityError(
                f"{sealed} is missing; pull the version's sealed files from the remote", file=str(sealed)
            )
        aad = version_file_aad(dataset, shard.version, shard.name)
        result = open_sealed_to(sealed, out_dir / shard.name, key.key, aad)
        if result.plaintext_sha256 != shard.sha256:
            result.path.unlink(missing_ok=True)
            raise IntegrityError(
                f"{sealed} decrypts to data with sha256 {result.plaintext_sha256[:16]}…, but the registry "
                f"says {shard.sha256[:16]}…; it was sealed from altered data — seal the version again",
                file=str(sealed),
            )
        (withdrawn if shard.withdrawn else data).append(result.path)
    return tuple(data), tuple(withdrawn)


def open_release(
    workspace_dir: Path, version: DatasetVersion, keys: Mapping[int, DataKey], out_dir: Path
) -> Release:
    """Decrypt every sealed file ``version`` reads from the workspace into ``out_dir`` (``open_shards``)."""
    data, withdrawn = open_shards(version.dataset, version_shards(workspace_dir, version), keys, out_dir)
    return Release(version, data, withdrawn)
