"""Resume checking for the Locust harness: a client's position in its room, and what is wrong
with what arrives.

A room's chats carry ``seq`` 1, 2, 3... within the room's ``epoch`` (docs/history.md). A
``SeqTracker`` follows one user across its connections: the welcome gives the epoch and the
position, every chat must then be the next seq, and after a reconnect the ``join`` with
``since`` must bring a ``history`` answer with ``recovered: true`` whose messages and welcome
continue the position exactly. Anything else is counted and reported through ``report``:

* ``gap``: a chat (live or replayed) whose seq skips some, or a welcome after a recovered
  replay that is past the replay's end: messages lost;
* ``duplicate``: a chat whose seq the user already had: delivered twice;
* ``mismatch`` (only with ``marks``, the reconnect storm's rooms): a chat whose seq is not the
  number its publisher wrote into it. A storm room is new and only its publisher chats, texts
  ``#1 ...``, ``#2 ...``, so the chat numbered seq N must be the publisher's N-th: anything
  else is a message that came with another message's place;
* a resume that is not recovered (``reason``) or that got no ``history`` answer at all is the
  caller's to report (``ResumeOutcome``), as a failed ``resume``.

No gevent and no Locust here: the tests import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

# report(kind, messages, detail): kind "gap" (messages: how many are missing), "duplicate" or
# "mismatch"
Report = Callable[[str, int, str], None]


def text_mark(text: object) -> int | None:
    """The publisher's number in a storm chat text ``#N ...`` (None for any other text)."""
    if not isinstance(text, str) or not text.startswith("#"):
        return None
    head = text[1:].split(" ", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass
class ResumeOutcome:
    """How the latest resume went (``history`` is None until its answer arrived)."""

    since: dict[str, Any]
    history: bool = False
    recovered: bool = False
    reason: str | None = None
    replayed: int = 0


class SeqTracker:
    def __init__(self, report: Report, marks: bool = False) -> None:
        self._report = report
        self.marks = marks  # check each chat's seq against its text's ``#N`` (see above)
        self.mismatched = 0
        self.live_since_welcome = 0  # live chats since the latest welcome
        self.epoch: str | None = None
        self.seq: int | None = None  # the position; None: none known (check nothing)
        self.resume: ResumeOutcome | None = None
        self.gaps = 0
        self.missing = 0  # messages skipped over all gaps
        self.duplicates = 0
        self.chats = 0

    def since(self) -> dict[str, Any] | None:
        """The ``since`` of the next join (None before the first welcome), and from now on the
        tracker expects that join's answer."""
        if self.epoch is None or self.seq is None:
            self.resume = None
            return None
        since = {"epoch": self.epoch, "seq": self.seq}
        self.resume = ResumeOutcome(since)
        return since

    def plain_join(self) -> None:
        """The next join carries no ``since``: its welcome sets the position afresh."""
        self.resume = None
        self.seq = None

    def chat(self, seq: int, where: str = "live", mark: int | None = None) -> None:
        self.chats += 1
        if where == "live":
            self.live_since_welcome += 1
        if mark is not None and self.marks and mark != seq:
            self.mismatched += 1
            self._report("mismatch", 1, f"{where} seq {seq} carries the publisher's #{mark}")
        position = self.seq
        if position is None:
            return
        if seq <= position:
            self.duplicates += 1
            self._report("duplicate", 1, f"{where} seq {seq} at position {position}")
            return
        if seq != position + 1:
            self.gaps += 1
            self.missing += seq - position - 1
            self._report("gap", seq - position - 1, f"{where} seq {seq} after {position}")
        self.seq = seq

    def history(self, message: dict[str, Any]) -> None:
        outcome = self.resume
        if outcome is None:
            return  # a `history: K` answer nobody here asked for: nothing to check
        outcome.history = True
        outcome.recovered = message.get("recovered") is True
        outcome.reason = message.get("reason")
        messages = message.get("messages") or []
        outcome.replayed = len(messages)
        if not outcome.recovered:
            # the stream could not be continued (the caller reports why): start again from
            # the welcome's position, not counting the hole as gaps
            self.seq = None
            return
        for m in messages:
            if not isinstance(m, dict):
                continue
            seq = m.get("seq")
            if isinstance(seq, int):
                self.chat(seq, "replayed", text_mark(m.get("text")) if self.marks else None)

    def welcome(self, epoch: str | None, seq: int | None) -> None:
        self.live_since_welcome = 0
        outcome = self.resume
        if (outcome is not None and outcome.recovered and self.seq is not None
                and isinstance(seq, int) and seq > self.seq):
            # recovered, yet the live stream starts past the replay's end
            self.gaps += 1
            self.missing += seq - self.seq
            self._report("gap", seq - self.seq,
                         f"welcome seq {seq} after a recovered replay ending at {self.seq}")
        if outcome is not None and not outcome.history:
            self.seq = None  # no answer: the position cannot be trusted past here
        self.epoch = epoch if epoch is not None else self.epoch
        if isinstance(seq, int):
            self.seq = seq


@dataclass
class ResumeTotals:
    """Counts of resumes, summed over users (and over processes by ``add``)."""

    resumes: int = 0
    recovered: int = 0
    no_history: int = 0
    replayed: int = 0
    gaps: int = 0
    missing: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def problem(self, kind: str, messages: int) -> None:
        if kind == "gap":
            self.gaps += 1
            self.missing += messages
        else:
            self.duplicates += messages

    def outcome(self, outcome: ResumeOutcome) -> None:
        self.resumes += 1
        self.replayed += outcome.replayed
        if not outcome.history:
            self.no_history += 1
        elif outcome.recovered:
            self.recovered += 1
        else:
            key = outcome.reason or "?"
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def add(self, other: dict[str, Any]) -> None:
        for name in ("resumes", "recovered", "no_history", "replayed", "gaps", "missing",
                     "duplicates"):
            value = other.get(name, 0)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        reasons = other.get("reasons")
        if isinstance(reasons, dict):
            for key, value in reasons.items():
                self.reasons[str(key)] = self.reasons.get(str(key), 0) + int(value)

    def to_dict(self) -> dict[str, Any]:
        return {"resumes": self.resumes, "recovered": self.recovered,
                "not_recovered": sum(self.reasons.values()), "no_history": self.no_history,
                "replayed": self.replayed, "gaps": self.gaps, "missing": self.missing,
                "duplicates": self.duplicates, "reasons": dict(self.reasons)}

    def take(self) -> dict[str, Any]:
        """The counts so far, and zero again (a worker's report to the master)."""
        out = self.to_dict()
        zero = ResumeTotals()
        for f in fields(self):
            setattr(self, f.name, getattr(zero, f.name))
        return out
