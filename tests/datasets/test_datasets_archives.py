"""gzip and zip input: read through, bounded while inflating, hostile archives refused by member."""

from __future__ import annotations

import gzip
import stat
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.crypto import digest_file
from databright.datasets.archives import DATA_SUFFIXES, zip_member
from databright.datasets.formats import open_table
from databright.datasets.limits import RATIO_GRACE_BYTES, ReadLimits
from databright.errors import UnreadableFile

CSV = b"a,b\n1,x\n2,\n3,z\n"
MB = 1_000_000
ZEROS = (b"0" * 999 + b"\n") * 1000  # 1 MB of long "0" rows: about 1000:1 under deflate


def _zip(path: Path, members: dict[str, bytes], **infos: zipfile.ZipInfo) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for info in infos.values():
            archive.writestr(info, b"target.csv")
    return path


def _frame(path: Path, **kwargs: object) -> pd.DataFrame:
    with open_table(path, **kwargs) as source:  # type: ignore[arg-type]
        return pd.concat([c.frame for c in source.chunks()], ignore_index=True)


def _refused(path: Path, **kwargs: object) -> UnreadableFile:
    with pytest.raises(UnreadableFile) as info, open_table(path, **kwargs) as source:  # type: ignore[arg-type]
        for _ in source.chunks():
            pass
    return info.value


# --- happy paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["data.csv", "data.jsonl", "data.ndjson", "data.parquet"])
def test_gzip_and_zip_read_like_the_plain_file(tmp_path: Path, inner: str) -> None:
    plain = tmp_path / inner
    expected = pd.DataFrame({"a": ["1", "2", "3"], "b": ["x", None, "z"]})
    if inner.endswith(".parquet"):
        pq.write_table(pa.Table.from_pandas(expected, preserve_index=False), plain)
    elif inner.endswith(".csv"):
        plain.write_bytes(CSV)
    else:
        plain.write_text(expected.to_json(orient="records", lines=True))
    gz = tmp_path / f"{inner}.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    zipped = _zip(tmp_path / "upload.zip", {"folder/": b"", f"folder/{inner}": plain.read_bytes()})
    reference = _frame(plain, limits=ReadLimits(chunk_rows=2))
    for path, compression, member in ((gz, "gzip", None), (zipped, "zip", f"folder/{inner}")):
        with open_table(path, limits=ReadLimits(chunk_rows=2)) as source:
            assert (source.kind, source.compression, source.member) == (
                DATA_SUFFIXES["." + inner.split(".")[-1]],
                compression,
                member,
            )
            assert source.input_digest == digest_file(path)  # the bytes received, not the inflated ones
            frame = pd.concat([c.frame for c in source.chunks()], ignore_index=True)
            again = pd.concat([c.frame for c in source.chunks()], ignore_index=True)
        pd.testing.assert_frame_equal(frame, reference)
        pd.testing.assert_frame_equal(again, reference)


def test_concatenated_gzip_members_read_as_one_stream(tmp_path: Path) -> None:
    path = tmp_path / "two.csv.gz"
    path.write_bytes(gzip.compress(b"a\n1\n") + gzip.compress(b"2\n"))
    assert _frame(path)["a"].tolist() == ["1", "2"]


def test_a_bom_inside_gzip_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv.gz"
    path.write_bytes(gzip.compress("\ufeffa\n1\n".encode()))
    assert list(_frame(path).columns) == ["a"]


# --- zip bombs (issue 4) ------------------------------------------------------------------------


def _zeros_zip(path: Path, name: str, size: int) -> Path:
    """A one-column CSV of ``size`` bytes of "0" rows."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w") as member:
        member.write(b"a\n")
        for _ in range(size // MB):
            member.write(ZEROS)
    return path


def test_a_zip_bomb_is_refused_from_its_declared_sizes_without_inflating(tmp_path: Path) -> None:
    path = _zeros_zip(tmp_path / "bomb.zip", "zeros.csv", 50 * MB)
    assert path.stat().st_size < 200_000  # ~50 MB of zeros compress about 1000:1
    error = _refused(path)
    message = str(error)
    assert "member 'zeros.csv'" in message and "compression ratio cap of 100:1" in message
    assert (
        "ReadLimits.max_compression_ratio" in message and "submit it uncompressed or raise the cap" in message
    )
    assert error.context["member"] == "zeros.csv" and error.context["limit"] == "max_compression_ratio"


def test_a_gzip_bomb_is_refused_while_streaming_after_a_few_mib(tmp_path: Path) -> None:
    path = tmp_path / "bomb.csv.gz"
    block = gzip.compress(ZEROS)  # concatenated gzip members are one valid stream
    path.write_bytes(gzip.compress(b"a\n") + block * 50)  # 50 MB inflated
    assert path.stat().st_size < 200_000
    error = _refused(path)
    assert "compression ratio cap of 100:1" in str(error) and "reading stopped" in str(error)
    assert RATIO_GRACE_BYTES < error.context["produced"] < 8 * RATIO_GRACE_BYTES  # of 50 MB
    assert error.context["produced"] > 100 * error.context["compressed"]


def _patch_central_directory(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the one member's central directory record
    data[entry + offset : entry + offset + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_a_zip_member_overstating_its_compressed_size_is_refused_as_truncated(tmp_path: Path) -> None:
    """Declaring compressed = uncompressed passes the ratio pre-check, but the bytes are not there."""
    path = _zeros_zip(tmp_path / "liar.zip", "zeros.csv", 4 * MB)
    _patch_central_directory(path, 20, 4 * MB + 2)
    error = _refused(path)
    assert "member 'zeros.csv': the compressed data is corrupt or truncated (EOFError)" in str(error)


def test_a_zip_member_understating_its_size_cannot_inflate_past_it(tmp_path: Path) -> None:
    path = _zeros_zip(tmp_path / "liar.zip", "zeros.csv", 4 * MB)
    _patch_central_directory(path, 24, RATIO_GRACE_BYTES)  # uncompressed size := 1 MiB
    error = _refused(path)
    assert "member 'zeros.csv': the compressed data is corrupt or truncated" in str(error)


# --- nested archives and hostile members (issue 4) ----------------------------------------------


@pytest.mark.parametrize("member", ["inner.zip", "data.csv.gz", "x.tar", "deep/x.7z"])
def test_a_nested_archive_member_is_refused(tmp_path: Path, member: str) -> None:
    error = _refused(_zip(tmp_path / "outer.zip", {member: b"PK\x03\x04"}))
    assert f"member {member!r} is an archive inside an archive" in str(error)
    assert "submit the data file itself" in str(error)


@pytest.mark.parametrize("name", ["data.zip.gz", "data.csv.gz.gz", "data.tar.gz"])
def test_a_gzip_of_an_archive_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"whatever"))
    assert "is an archive inside an archive" in str(_refused(path))


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../../x.csv", "climbs out of the archive with '..'"),
        ("ok/../../x.csv", "climbs out of the archive with '..'"),
        ("..\\..\\x.csv", "climbs out of the archive with '..'"),
        ("/etc/x.csv", "is an absolute path"),
        ("C:/x.csv", "is an absolute path"),
    ],
)
def test_hostile_member_names_are_refused(tmp_path: Path, member: str, why: str) -> None:
    path = _zip(tmp_path / "evil.zip", {member: CSV})
    error = _refused(path)
    assert f"member {member!r} {why}" in str(error) and "zip the data file alone, at the top level" in str(
        error
    )
    assert error.context["member"] == member
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]  # nothing was extracted anywhere


def test_a_nul_in_a_member_name_is_refused(tmp_path: Path) -> None:
    # zipfile cuts names at NUL when writing, so plant the byte in the archive directly
    path = _zip(tmp_path / "nul.zip", {"data.csv!.txt": CSV})
    path.write_bytes(path.read_bytes().replace(b"data.csv!", b"data.csv\x00"))
    error = _refused(path)
    assert "member 'data.csv\\x00.txt' contains a NUL byte" in str(error)


def test_a_symlink_member_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("data.csv")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    error = _refused(_zip(tmp_path / "link.zip", {}, link=link))
    assert "member 'data.csv' is a symbolic link" in str(error) and "without links" in str(error)


def test_an_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "enc.zip", {"data.csv": CSV})
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
        info.flag_bits |= 0x1  # what an encrypting zip tool sets; the check reads the directory only
        with pytest.raises(UnreadableFile, match=r"member 'data\.csv' is encrypted"):
            zip_member(archive, "enc.zip", ReadLimits())


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ({"a.csv": CSV, "b.csv": CSV}, "must hold exactly one data file, found 2 ('a.csv', 'b.csv')"),
        ({"empty/": b""}, "must hold exactly one data file, found 0 (none)"),
        ({"a.csv": CSV, "README.txt": b"hi"}, "member 'README.txt': unknown file type '.txt'"),
    ],
)
def test_a_zip_must_hold_exactly_one_data_file(
    tmp_path: Path, members: dict[str, bytes], fragment: str
) -> None:
    assert fragment in str(_refused(_zip(tmp_path / "many.zip", members)))


def test_more_members_than_the_cap_are_refused_before_any_is_read(tmp_path: Path) -> None:
    path = _zip(tmp_path / "wide.zip", {f"d{i}/": b"" for i in range(5)} | {"a.csv": CSV})
    assert len(_frame(path, limits=ReadLimits(max_members=6))) == 3
    error = _refused(path, limits=ReadLimits(max_members=5))
    assert "holds 6 entries, over the cap of 5 (ReadLimits.max_members)" in str(error)


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("bad.zip", b"PK\x03\x04 not really", "is not a readable zip archive"),
        ("bad.csv.gz", b"plain text, not gzip", "the compressed data is corrupt or truncated"),
        (
            "cut.csv.gz",
            gzip.compress(CSV * 100, mtime=0)[:-30],
            "the compressed data is corrupt or truncated",
        ),
        ("data.bz2", b"BZh9", "'.bz2' archives are not accepted"),
    ],
)
def test_broken_archives_are_refused(tmp_path: Path, name: str, data: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert fragment in str(_refused(path))


def test_a_gzip_member_is_streamed_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.csv.gz"
    rows = b"".join(b"%d,%d\n" % (i, i * 7919 % 1000) for i in range(200_000))
    path.write_bytes(gzip.compress(b"a,b\n" + rows, compresslevel=1))
    with open_table(path, limits=ReadLimits(chunk_rows=10_000)) as source:
        first = next(source.chunks())
        assert first.row_count == 10_000 and first.input_bytes_read < source.input_bytes
