"""Text input shared by the CSV and JSON Lines readers: checked UTF-8 blocks, headers, text frames.

``decoded_blocks`` turns the submitted byte stream into UTF-8 text in blocks that end at a line
end, refusing on the way (with ``UnreadableFile`` naming the byte offset and line) what is not
text: an archive or Parquet magic number at the start, a NUL byte, invalid UTF-8, a "line" longer
than ``MAX_LINE_BYTES``. A leading byte-order mark is stripped explicitly. ``check_header`` refuses
a header over the column cap, with an unnamed column or a name given twice. ``text_frame`` builds
the text frame a reader hands on: every column in ``TEXT_DTYPE``, an empty field missing.

``sniff_magic`` is the start-of-file check on its own, so that the CSV fast path (``csv_reader``)
can apply exactly the same rule to the raw bytes it feeds to Arrow.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterator
from typing import IO, Any

import pandas as pd

from databright.datasets.limits import MAX_LINE_BYTES, MiB, ReadLimits
from databright.errors import UnreadableFile

__all__ = ["BOM", "TEXT_DTYPE", "check_header", "decoded_blocks", "sniff_magic", "text_frame"]

TEXT_DTYPE = pd.StringDtype("pyarrow", na_value=pd.NA)
BOM = "\ufeff"
BLOCK = 1 * MiB
_MAGIC = {b"\x1f\x8b": ".gz", b"PK\x03\x04": ".zip", b"PAR1": ".parquet"}


def sniff_magic(first_block: bytes) -> str | None:
    """The suffix of the binary format that ``first_block`` (the file's first bytes) starts like."""
    for magic, suffix in _MAGIC.items():
        # A header may well start with "PAR1"; a Parquet file also holds NUL bytes.
        if first_block.startswith(magic) and (suffix != ".parquet" or b"\x00" in first_block):
            return suffix
    return None


def decoded_blocks(stream: IO[bytes], name: str, line_ends: str) -> Iterator[str]:
    """UTF-8 text from ``stream`` in blocks that each end at a line end (the last may not)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = newlines = 0  # bytes and b"\n" before this block, for messages
    carry = ""  # text after the last line end, completed by the next block
    first = True  # no text yet: a BOM may still come
    while True:
        block = stream.read(BLOCK)
        final = not block
        if offset == 0:
            suffix = sniff_magic(block)
            if suffix is not None:
                raise UnreadableFile(
                    f"{name} starts like a {suffix} file, not text; name it with its real suffix "
                    f"(e.g. data.csv{suffix} or data{suffix}) and submit it again",
                    file=name,
                )
        nul = block.find(b"\x00")
        if nul >= 0:
            line = newlines + block.count(b"\n", 0, nul) + 1
            raise UnreadableFile(
                f"{name}: NUL byte at offset {offset + nul} (line {line}); this is not a text file — "
                "export it again as UTF-8 text",
                file=name,
                offset=offset + nul,
                line=line,
            )
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(block, final)
        except UnicodeDecodeError as exc:
            at = offset - pending + exc.start
            line = newlines + block.count(b"\n", 0, max(0, exc.start - pending)) + 1
            bad = bytes(exc.object[exc.start : exc.start + 4])
            raise UnreadableFile(
                f"{name}: invalid UTF-8 at byte {at} (line {line}): {bad!r}; re-encode the file as UTF-8",
                file=name,
                offset=at,
                line=line,
            ) from exc
        offset += len(block)
        newlines += block.count(b"\n")
        if first and text:
            first = False
            if text.startswith(BOM):
                text = text[len(BOM) :]
        text = carry + text if carry else text
        if final:
            if text:
                yield text
            return
        cut = max(text.rfind(end, 0, len(text) - 1 if end == "\r" else len(text)) for end in line_ends)
        if cut < 0:
            carry = text
            if len(carry) > MAX_LINE_BYTES:
                raise UnreadableFile(
                    f"{name}: line {newlines + 1} is longer than {MAX_LINE_BYTES:,} characters; "
                    "this is not a line-oriented text file — check the format and the line endings",
                    file=name,
                    line=newlines + 1,
                )
            continue
        carry = text[cut + 1 :]
        yield text[: cut + 1]


def check_header(header: list[str], name: str, what: str, limits: ReadLimits) -> tuple[str, ...]:
    """``header`` as the column names, refused over the column cap, with a name missing or repeated."""
    if len(header) > limits.max_columns:
        raise UnreadableFile(
            f"{name}: the {what} names {len(header):,} columns, over the cap of {limits.max_columns:,} "
            "(ReadLimits.max_columns); split the columns or raise the cap",
            file=name,
            limit="max_columns",
        )
    unnamed = [i + 1 for i, h in enumerate(header) if h == ""]
    if unnamed:
        raise UnreadableFile(
            f"{name}: column {unnamed[0]} of the {what} has no name; name every column "
            "(a trailing delimiter leaves an unnamed last column)",
            file=name,
            column=unnamed[0],
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise UnreadableFile(
            f"{name}: the {what} names {repeated} more than once; give each column one name",
            file=name,
            columns=repeated,
        )
    return tuple(header)


def text_frame(rows: list[list[Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows of text (or None) as string columns, with an empty string made missing."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    # One Arrow array over all cells, then a strided take per column: far cheaper than building
    # each column from Python objects.
    width = len(columns)
    cells = pa.array(list(itertools.chain.from_iterable(rows)), type=pa.string())
    cells = pc.if_else(pc.equal(cells, ""), pa.scalar(None, pa.string()), cells)
    data = {}
    for i, column in enumerate(columns):
        arr = cells.take(pa.array(np.arange(i, len(cells), width, dtype=np.int64)))
        data[column] = pd.Series(pd.arrays.ArrowStringArray(arr), copy=False)
    return pd.DataFrame(data, columns=list(columns))
