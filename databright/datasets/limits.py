"""What a reader may be asked to swallow, and how a CSV is spelled: ``ReadLimits`` and ``CsvDialect``.

Every cap is checked as early as the format allows — the size on disk before a byte is read,
Parquet footers before any page, zip central directories before any member is inflated — and
again while streaming, because headers can lie. Decompressed bytes are counted as they come out
of the decompressor, so a decompression bomb is refused after at most a few MiB of output, never
inflated in full. A refusal is an ``UnreadableFile`` naming the cap, the value that broke it and
the ``ReadLimits`` field to raise if the input is genuine.

Defaults (all overridable with ``dataclasses.replace(ReadLimits(), ...)``):

=========================  ===============  ==============================================
field                      default          bounds
=========================  ===============  ==============================================
``max_bytes``              2 GiB            the file as received (compressed or not)
``max_uncompressed_bytes`` 8 GiB            bytes coming out of gzip/zip, or a Parquet's
                                            uncompressed row groups
``max_compression_ratio``  100              decompressed ÷ compressed, once past 1 MiB
``max_members``            16               entries in a zip's central directory
``max_rows``               50,000,000       data rows
``max_columns``            1,000            columns in the header / schema
``max_row_groups``         100,000          row groups in a Parquet file
``chunk_rows``             100,000          rows per ``Chunk`` handed to the pipeline
=========================  ===============  ==============================================

The ratio cap only applies once the output passes ``RATIO_GRACE_BYTES``: a tiny, very repetitive
file legitimately compresses far better than 100:1 and cannot hurt anyone.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass
from typing import Any

from databright.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

RATIO_GRACE_BYTES = 1 * MiB
# No physical line may be longer than this: it bounds what a reader buffers while looking for the
# end of a line (csv's own per-field limit is far smaller, 128 K characters).
MAX_LINE_BYTES = 64 * MiB
ACCEPTED_ENCODINGS = ("utf-8", "utf-8-sig")


def _positive_int(owner: str, field: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{owner}.{field} must be an integer of at least {minimum:,}, got {value!r}; "
            f"pass e.g. {owner}({field}={max(minimum, 1) * 1000})",
            field=field,
            value=value,
        )


@dataclass(frozen=True)
class ReadLimits:
    """Caps on one submission; see the module docstring for what each bounds and its default."""

    max_bytes: int = 2 * GiB
    max_uncompressed_bytes: int = 8 * GiB
    max_compression_ratio: float = 100.0
    max_members: int = 16
    max_rows: int = 50_000_000
    max_columns: int = 1_000
    max_row_groups: int = 100_000
    chunk_rows: int = 100_000

    def __post_init__(self) -> None:
        for field in (
            "max_bytes",
            "max_uncompressed_bytes",
            "max_members",
            "max_rows",
            "max_columns",
            "max_row_groups",
            "chunk_rows",
        ):
            _positive_int("ReadLimits", field, getattr(self, field))
        ratio = self.max_compression_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio >= 1.0:
            raise ConfigError(
                f"ReadLimits.max_compression_ratio must be a number of at least 1, got {ratio!r}; "
                "pass e.g. ReadLimits(max_compression_ratio=100)",
                field="max_compression_ratio",
                value=ratio,
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_char(field: str, value: Any) -> None:
    if not isinstance(value, str) or len(value) != 1:
        raise ConfigError(
            f"CsvDialect.{field} must be exactly one character, got {value!r}; "
            f"pass e.g. CsvDialect({field}={';' if field == 'delimiter' else chr(34)!r})",
            field=field,
            value=value,
        )
    if value in "\r\n\x00":
        raise ConfigError(
            f"CsvDialect.{field} cannot be a line break or NUL (got {value!r}); pick a printable character",
            field=field,
            value=value,
        )


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV is spelled. Only UTF-8 is accepted (``"utf-8-sig"`` and spellings such as ``"UTF8"``
    name the same thing); a leading byte-order mark is stripped whichever is declared.

    The rest of the dialect is fixed: a quote inside a quoted field is doubled (``""``), there is
    no escape character, and both ``\\n`` and ``\\r\\n`` end a row.
    """

    delimiter: str = ","
    quotechar: str = '"'
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        _one_char("delimiter", self.delimiter)
        _one_char("quotechar", self.quotechar)
        if self.delimiter == self.quotechar:
            raise ConfigError(
                f"CsvDialect: the delimiter and the quote character are both {self.delimiter!r}; "
                "they must differ",
                delimiter=self.delimiter,
            )
        try:
            canonical = codecs.lookup(self.encoding).name if isinstance(self.encoding, str) else None
        except LookupError:
            canonical = None
        if canonical not in ACCEPTED_ENCODINGS:
            raise ConfigError(
                f"CsvDialect.encoding {self.encoding!r} is not accepted: DataBright reads UTF-8 only; "
                f"re-encode the file (e.g. `iconv -f {self.encoding} -t utf-8 in.csv > out.csv`) "
                "and declare encoding='utf-8'",
                encoding=self.encoding,
            )
        # Both accepted spellings decode the same way here: the BOM is handled explicitly.
        object.__setattr__(self, "encoding", "utf-8")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
