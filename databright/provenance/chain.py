"""The chain an audit walks: statements loaded once and verified, producers found by their subjects.

``Chain`` owns what every stage check needs: the list of ``Link`` results, the verified statements
(each envelope opened once, its signature checked against the stage key and its content against
its index row), and ``producer``, which resolves a consumed artifact to the verified statement
that produced it with the same digest. ``At`` is a chain seen from one stage, so a stage's checks
read ``at.same(artifact, check, found, expected)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from databright.crypto import PublicKey
from databright.errors import DatabrightError
from databright.provenance.report import Link
from databright.provenance.statements import IndexedStatement, ProvenanceLog, StageStatement

# Inputs another stage must have produced, and the stages that may produce them.
PRODUCED_BY = {
    "dataset:": ("ingest", "withdraw"),
    "receipt:": ("train",),
    "model:": ("train",),
    "valuation-receipt:": ("value",),
}
# What a damaged artifact can raise while it is read and compared: each becomes a broken link.
FAILURES = (DatabrightError, OSError, ValueError, LookupError, TypeError)


def subject_digest(statement: StageStatement, name: str) -> str | None:
    found = statement.subject(name)
    return None if found is None else found.digest


def input_digest(statement: StageStatement, name: str) -> str | None:
    found = statement.input(name)
    return None if found is None else found.digest


class Chain:
    def __init__(self, log: ProvenanceLog, stage_key: PublicKey) -> None:
        self.log = log
        self.db = log.db
        self.store = log.store
        self.stage_key = stage_key
        self.links: list[Link] = []
        self.loaded: dict[str, StageStatement | None] = {}
        self.resolved: dict[tuple[str, str], StageStatement | None] = {}

    def at(self, stage: str) -> At:
        return At(self, stage)

    def verified_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for statement in self.loaded.values():
            if statement is not None:
                counts[statement.stage] = counts.get(statement.stage, 0) + 1
        return counts

    def load(self, row: IndexedStatement) -> StageStatement | None:
        """The verified statement behind ``row`` (None, with a broken link, if it does not verify)."""
        if row.binding_digest in self.loaded:
            return self.loaded[row.binding_digest]
        self.loaded[row.binding_digest] = None
        at, what = self.at(row.stage), f"statement {row.statement_digest[:16]}…"
        check = "signed by the stage key, content = its index row"
        with at.step(what, check):
            statement, digest = self.log.load(row, self.stage_key)
            indexed = (row.stage, row.period, row.assurance, row.subjects, row.statement_digest)
            signed = (statement.stage, statement.period, statement.assurance, statement.subjects, digest)
            if at.same(what, check, signed, indexed, "the statement or its index row was edited"):
                self.loaded[row.binding_digest] = statement
        return self.loaded[row.binding_digest]

    def producer(self, consumer: StageStatement, name: str) -> StageStatement | None:
        """The verified statement whose subject ``name`` has the digest ``consumer`` consumed."""
        key = (consumer.binding_digest, name)
        if key not in self.resolved:
            self.resolved[key] = self._producer(consumer, name)
        return self.resolved[key]

    def _producer(self, consumer: StageStatement, name: str) -> StageStatement | None:
        stages = next(s for prefix, s in PRODUCED_BY.items() if name.startswith(prefix))
        wanted = input_digest(consumer, name)
        check = f"consumed by {consumer.stage}, produced by {'/'.join(stages)} with the same digest"
        found = [s for row in self.log.producers(name) if (s := self.load(row)) is not None]
        found = [s for s in found if s.stage in stages]
        match = next((s for s in found if subject_digest(s, name) == wanted), None)
        if match is not None:
            self.at(match.stage).link(name, check, True)
            return match
        if found:
            detail = (
                f"the {found[0].stage} statement produced {subject_digest(found[0], name)}, the "
                f"{consumer.stage} statement consumed {wanted}"
            )
        else:
            detail = f"no {'/'.join(stages)} statement produces it: it was deleted, or never recorded"
        stage = self._version_stage(name) if name.startswith("dataset:") else stages[0]
        self.at(stage).link(name, check, False, detail)
        return None

    def _version_stage(self, name: str) -> str:
        """Which stage should have produced a version artifact: the registry knows withdrawals."""
        dataset, _, rest = name.removeprefix("dataset:").partition("@v")
        number = rest.split("/")[0].split("#")[0]
        if not number.isdigit():
            return "ingest"
        found = self.db.query(
            "SELECT 1 FROM withdrawals WHERE dataset = ? AND version = ?", [dataset, int(number)]
        )
        return "withdraw" if found else "ingest"

    def producers_of_inputs(self, statement: StageStatement) -> list[StageStatement]:
        """Resolve every produced input of ``statement``; check that simulated inputs make it simulated."""
        producers = []
        for artifact in statement.inputs:
            if any(artifact.name.startswith(prefix) for prefix in PRODUCED_BY):
                found = self.producer(statement, artifact.name)
                if found is not None:
                    producers.append(found)
        simulated = [p for p in producers if p.assurance == "simulated"]
        if simulated:
            self.at(statement.stage).same(
                f"{statement.stage} statement",
                "assurance: simulated, as its inputs are",
                statement.assurance,
                "simulated",
                f"it rests on a simulated {simulated[0].stage} statement",
            )
        return producers


class At:
    """The chain seen from one stage: every link it records names that stage."""

    def __init__(self, chain: Chain, stage: str) -> None:
        self.chain = chain
        self.stage = stage

    def link(self, artifact: str, check: str, ok: bool, detail: str = "") -> bool:
        self.chain.links.append(Link(self.stage, artifact, check, ok, "" if ok else detail))
        return ok

    def same(self, artifact: str, check: str, found: Any, expected: Any, fix: str = "") -> bool:
        detail = f"found {found!r}, expected {expected!r}" + (f"; {fix}" if fix else "")
        return self.link(artifact, check, found == expected, detail)

    @contextmanager
    def step(self, artifact: str, check: str) -> Iterator[None]:
        """Run checks that read stored artifacts; anything they raise is a broken link, not a crash."""
        try:
            yield
        except FAILURES as exc:
            self.link(artifact, check, False, f"{type(exc).__name__}: {exc}")
