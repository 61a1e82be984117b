"""Issue 4's list of bad inputs, each sent through ``register_file`` end to end.

For every file-level refusal: a ``DatabrightError`` subclass whose message names the line, column,
member or cap and says what to do, and afterwards no trace at all — no registry row, no version
folder, no DVC file, no staging folder. For row-level faults (NaN, ±Inf, out of range): the bad
rows land in quarantine with row number, column, expectation and value, the rest is registered.
The readers' own tests (test_datasets_formats, _archives, _readers_limits) check each refusal in
more detail; the duplicate and concurrency cases live in test_datasets_ingest_robustness.
"""

from __future__ import annotations

import gzip
import io
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.config import Settings
from databright.datasets import ReadLimits, Registry, register_file
from databright.db import ExchangeDB
from databright.errors import DatabrightError, SchemaMismatch, UnreadableFile

HEADER = ",".join([*(f"f{i}" for i in range(8)), "label"])
ROW = "0.5,1.0,-1.0,2.0,0.0,3.0,-2.0,1.5,1"
CSV = f"{HEADER}\n{ROW}\n".encode()


def _write(data: bytes, name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


def _zip(members: dict[str, bytes], name: str = "in.zip", link: str | None = None) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for member, data in members.items():
                archive.writestr(member, data)
            if link is not None:
                info = zipfile.ZipInfo(link)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, "/etc/passwd")
        return path

    return build


def _parquet(table: pa.Table, name: str = "in.parquet", cut_footer: bool = False) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        data = sink.getvalue()
        path = folder / name
        path.write_bytes(data[:-12] + b"\x00" * 8 + data[-4:] if cut_footer else data)
        return path

    return build


def _typed_table() -> pa.Table:
    frame = pd.read_csv(io.BytesIO(CSV))
    return pa.Table.from_pandas(frame, preserve_index=False)


def _zip_bomb(folder: Path) -> Path:
    path = folder / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("z.csv", "w") as member:
        member.write(b"f0\n")
        member.write(b"0\n" * (8 * 2**20))
    return path


def _symlink_to_outside(folder: Path) -> Path:
    """A file the contributor names as a symlink: it is read through, never written through."""
    target = folder / "real.csv"
    target.write_bytes(CSV.replace(b",1\n", b",1,extra\n"))
    link = folder / "link.csv"
    link.symlink_to(target)
    return link


# (id, builder, error class, fragments the message must contain, read limits)
FILE_CASES: list[tuple[str, Callable[[Path], Path], type[DatabrightError], tuple[str, ...], ReadLimits]] = [
    ("ragged row", _write(CSV + b"1,2,3\n", "a.csv"), UnreadableFile,
     ("line 3 has 3 fields but the header has 9", "fix the row's delimiters or quoting"), ReadLimits()),
    ("invalid utf-8", _write(CSV + b"0.5,1,1,1,1,1,1,1,\xff\n", "a.csv"), UnreadableFile,
     ("invalid UTF-8 at byte", "(line 3)", "re-encode the file as UTF-8"), ReadLimits()),
    ("nul byte", _write(CSV.replace(b"0.5", b"0\x005"), "a.csv"), UnreadableFile,
     ("NUL byte at offset", "(line 2)", "export it again as UTF-8 text"), ReadLimits()),
    ("wrong delimiter", _write(CSV.replace(b",", b";"), "a.csv"), UnreadableFile,
     ("semicolon-separated", "declare the delimiter"), ReadLimits()),
    ("empty file", _write(b"", "a.csv"), UnreadableFile,
     ("the file is empty", "submit a file with a header and data rows"), ReadLimits()),
    ("header only", _write(f"{HEADER}\n".encode(), "a.csv"), UnreadableFile,
     ("has a header but no data rows", "add the rows"), ReadLimits()),
    ("extra column", _write(CSV.replace(b"label\n", b"label,extra\n").replace(b",1\n", b",1,9\n"), "a.csv"),
     SchemaMismatch, ("SCHEMA_MISMATCH", "extra"), ReadLimits()),
    ("missing column", _write(CSV.replace(b"f7,", b"").replace(b"1.5,", b""), "a.csv"),
     SchemaMismatch, ("SCHEMA_MISMATCH", "f7"), ReadLimits()),
    ("retyped column", _parquet(_typed_table().set_column(0, "f0", pa.array(["x"]))),
     SchemaMismatch, ("SCHEMA_MISMATCH", "f0"), ReadLimits()),
    ("corrupted parquet footer", _parquet(_typed_table(), cut_footer=True), UnreadableFile,
     ("is not a readable Parquet file", "write it again"), ReadLimits()),
    ("nested parquet", _parquet(_typed_table().append_column("deep", pa.array([[1, 2]]))), SchemaMismatch,
     ("column 'deep' has the nested type", "flatten it"), ReadLimits()),
    ("over the byte cap", _write(CSV * 40, "a.csv"), UnreadableFile,
     ("ReadLimits.max_bytes",), ReadLimits(max_bytes=1024)),
    ("zip bomb", _zip_bomb, UnreadableFile,
     ("compression ratio cap of 100:1", "ReadLimits.max_compression_ratio"), ReadLimits()),
    ("nested archive", _zip({"inner.zip": b"PK\x03\x04"}), UnreadableFile,
     ("member 'inner.zip' is an archive inside an archive", "submit the data file itself"), ReadLimits()),
    ("gzip of a zip", _write(gzip.compress(b"PK\x03\x04"), "a.zip.gz"), UnreadableFile,
     ("is an archive inside an archive",), ReadLimits()),
    ("member ../../x", _zip({"../../x.csv": CSV}), UnreadableFile,
     ("climbs out of the archive with '..'",), ReadLimits()),
    ("member /etc/x", _zip({"/etc/x.csv": CSV}), UnreadableFile, ("is an absolute path",), ReadLimits()),
    ("member with NUL", _zip({"data.csv!.txt": CSV}, name="nul.zip"), UnreadableFile,
     ("contains a NUL byte",), ReadLimits()),
    ("symlink member", _zip({}, link="data.csv"), UnreadableFile, ("is a symbolic link",), ReadLimits()),
    ("symlinked input with a ragged row", _symlink_to_outside, UnreadableFile,
     ("line 2 has 10 fields",), ReadLimits()),
]  # fmt: skip


def _plant_nul_in_member_name(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"data.csv!", b"data.csv\x00"))


def _no_trace(settings: Settings, db: ExchangeDB) -> None:
    for table in ("datasets", "dataset_versions", "records", "submissions", "quarantine"):
        assert db.query(f"SELECT count(*) FROM {table}")[0][0] == 0, table
    staging = settings.home / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    datasets = settings.workspace_dir / "datasets"
    assert not datasets.exists() or list(datasets.rglob("*")) == []


@pytest.mark.parametrize(("build", "error", "fragments", "limits"), [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])  # fmt: skip
def test_a_bad_file_is_refused_whole_naming_the_fault_and_the_fix(
    settings: Settings,
    file_db: ExchangeDB,
    tmp_path: Path,
    build: Callable[[Path], Path],
    error: type[DatabrightError],
    fragments: tuple[str, ...],
    limits: ReadLimits,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    path = build(folder)
    if path.name == "nul.zip":
        _plant_nul_in_member_name(path)
    with pytest.raises(error) as refused:
        register_file(settings, file_db, dataset="d", contract_kind="tabular-v1", owner="alice",
                      path=path, limits=limits)  # fmt: skip
    for fragment in fragments:
        assert fragment in str(refused.value), (fragment, str(refused.value))
    _no_trace(settings, file_db)
    assert {p.name for p in folder.rglob("*")} <= {path.name, "real.csv"}  # nothing written beside it


@pytest.mark.parametrize(
    ("cell", "expectation"),
    [
        ("nan", "finite"),
        ("inf", "finite"),
        ("-Infinity", "finite"),
        ("50.5", "expect_column_values_to_be_between"),
        ("-99", "expect_column_values_to_be_between"),
    ],
)
def test_bad_values_are_quarantined_and_findable(
    settings: Settings, file_db: ExchangeDB, tmp_path: Path, cell: str, expectation: str
) -> None:
    bad = f"0.5,1.0,{cell},2.0,0.0,3.0,-2.0,1.5,0"
    path = tmp_path / "a.csv"
    path.write_text(f"{HEADER}\n{ROW}\n{bad}\n")
    result = register_file(
        settings, file_db, dataset="d", contract_kind="tabular-v1", owner="alice", path=path
    )
    assert (result.rows_received, result.accepted, result.quarantined_rows) == (2, 1, 1)
    rows = Registry(file_db).quarantine_rows(result.submission_id)
    assert rows == [(2, "f2", expectation, cell)]
