"""What an audit hands back: every checked ``Link`` in walk order, and the first broken one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from databright.provenance.statements import STAGES


@dataclass(frozen=True)
class Link:
    """One checked link: at ``stage``, ``artifact`` passed (or failed) ``check``; ``detail`` says why."""

    stage: str
    artifact: str
    check: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "artifact": self.artifact,
            "check": self.check,
            "ok": self.ok,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        return f"[{self.stage}] {self.artifact}: {self.check}" + (
            "" if self.ok else f" — BROKEN: {self.detail}"
        )


@dataclass(frozen=True)
class AuditReport:
    """The audit of one period: ``ok`` when every link holds; ``first_broken`` names the stage."""

    period: str
    links: tuple[Link, ...]
    statements: dict[str, int]  # statements verified per stage: the period's and those it reached
    assurance: str | None  # the settle statement's; None when the period has none

    @property
    def ok(self) -> bool:
        return all(link.ok for link in self.links)

    @property
    def first_broken(self) -> Link | None:
        return next((link for link in self.links if not link.ok), None)

    @property
    def broken(self) -> tuple[Link, ...]:
        return tuple(link for link in self.links if not link.ok)

    @property
    def checked(self) -> dict[str, int]:
        """Links checked per stage, in walk order."""
        counts = {stage: sum(1 for link in self.links if link.stage == stage) for stage in STAGES}
        return {stage: n for stage, n in counts.items() if n}

    def to_dict(self) -> dict[str, Any]:
        first = self.first_broken
        return {
            "period": self.period,
            "ok": self.ok,
            "assurance": self.assurance,
            "statements": dict(self.statements),
            "checked": self.checked,
            "first_broken": None if first is None else first.to_dict(),
            "links": [link.to_dict() for link in self.links],
        }

    def summary(self) -> str:
        counts = ", ".join(f"{stage} {n}" for stage, n in self.checked.items())
        state = "ok" if self.ok else f"BROKEN ({len(self.broken)} broken)"
        head = f"audit {self.period}: {state} — {len(self.links)} links checked ({counts})"
        first = self.first_broken
        return head if first is None else f"{head}\nfirst broken link: {first}"

    def __repr__(self) -> str:
        return f"AuditReport({self.summary().splitlines()[0]})"
