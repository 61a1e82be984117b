"""One pass over a JSON Lines file (``.jsonl``/``.ndjson``): ``JsonlPass(stream, name, limits)``.

One object per line, every line with the same keys (in any order; the first object's order is the
column order). Values become text like CSV's: a string as is, a number as its literal text
(``1.50`` stays ``1.50``; ``NaN``/``Infinity`` as written, for the contract to quarantine),
``true``/``false`` as those words, ``null`` as missing. Blank lines are skipped. Refused with
``UnreadableFile`` naming the line (and key): a line that is not JSON or not an object, a repeated
key, a nested object or array, keys differing from the first object's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import IO, Any

from databright.datasets.limits import ReadLimits
from databright.datasets.text_input import check_header, decoded_blocks
from databright.errors import UnreadableFile

__all__ = ["JsonlPass"]


class _RepeatedKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _json_text(value: Any, name: str, line: int, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value  # numbers arrive as their literal text (parse_int/parse_float/parse_constant)
    if value is True or value is False:
        return "true" if value else "false"
    shape = "object" if isinstance(value, dict) else "array"
    raise UnreadableFile(
        f"{name}: line {line}, key {key!r} holds a nested {shape}; DataBright reads flat records — "
        "give each value its own key, or encode it as a string",
        file=name,
        line=line,
        column=key,
    )


class JsonlPass:
    """One pass over JSON Lines: the first object (its keys are the columns) is read on construction."""

    def __init__(self, stream: IO[bytes], name: str, limits: ReadLimits) -> None:
        self.name = name
        self.limits = limits
        self._objects = self._parse(decoded_blocks(stream, name, "\n"))
        first = next(self._objects, None)
        if first is None:
            raise UnreadableFile(f"{name}: the file is empty; write one JSON object per line", file=name)
        line, obj = first
        self.columns = check_header(list(obj), name, f"object on line {line}", limits)
        self._first = self._values(line, obj)

    def _parse(self, blocks: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        name = self.name
        line = 0
        for block in blocks:
            for text in block.split("\n"):
                line += 1
                if not text.strip():
                    continue
                try:
                    obj = json.loads(
                        text, parse_float=str, parse_int=str, parse_constant=str, object_pairs_hook=_pairs
                    )
                except _RepeatedKey as exc:
                    raise UnreadableFile(
                        f"{name}: line {line} repeats the key {exc.args[0]!r}; give each key once",
                        file=name,
                        line=line,
                    ) from exc
                except json.JSONDecodeError as exc:
                    raise UnreadableFile(
                        f"{name}: line {line} is not valid JSON ({exc.msg} at column {exc.colno}); "
                        "write one JSON object per line",
                        file=name,
                        line=line,
                    ) from exc
                if not isinstance(obj, dict):
                    raise UnreadableFile(
                        f"{name}: line {line} is a JSON {type(obj).__name__}, not an object; "
                        "JSON Lines needs one object per line",
                        file=name,
                        line=line,
                    )
                yield line, obj
            line -= 1  # a block ends with "\n": its last, empty piece is not a line of its own

    def _values(self, line: int, obj: dict[str, Any]) -> list[str | None]:
        if len(obj) != len(self.columns) or any(key not in obj for key in self.columns):
            missing = sorted(set(self.columns) - obj.keys())
            extra = sorted(obj.keys() - set(self.columns))
            raise UnreadableFile(
                f"{self.name}: line {line} has different keys from the first object (missing {missing}, "
                f"extra {extra}); give every line the same keys, with null for a missing value",
                file=self.name,
                line=line,
            )
        return [_json_text(obj[key], self.name, line, key) for key in self.columns]

    def batches(self, size: int) -> Iterator[list[list[str | None]]]:
        rows = itertools.chain([self._first], itertools.starmap(self._values, self._objects))
        while batch := list(itertools.islice(rows, size)):
            yield batch
