"""Running the Autobahn TestSuite's own RFC 6455 cases against a server, and reading the verdicts.

kosoku (PyPI) replays the Autobahn case files natively in fuzzingclient mode: one connection per
case to the URL under test, which must echo every text and binary message back. It writes the
Autobahn report format to its output directory: ``index.json`` maps the agent (the server's
``Server`` header, else ``host:port``) to ``{case id: {behavior, behaviorClose, remoteCloseCode,
duration, reportfile}}``, and each ``reportfile`` (JSON, beside an HTML twin) holds the case's
description, expectation, the events received, the close details and the wire log.

Each case has two verdicts. ``behavior`` judges the messages: OK, NON-STRICT (a SHOULD not
followed, still conformant), INFORMATIONAL (the spec leaves it open), FAILED (a MUST broken),
UNIMPLEMENTED, or ERROR (no verdict: the case crashed or could not connect). ``behaviorClose``
judges the closing handshake: OK, INFORMATIONAL, or FAILED (the wrong endpoint closed, or the
opening handshake never completed), UNCLEAN (a clean close was required), WRONG CODE, FAILED BY
CLIENT (the client had to drop the TCP connection the server should have closed).

A case passes here when ``behavior`` is OK, NON-STRICT or INFORMATIONAL and ``behaviorClose`` is
OK or INFORMATIONAL, which is also kosoku's own pass rule (its exit status). Autobahn's report
paints WRONG CODE and FAILED BY CLIENT in softer colours than a failure because a library may
pick its codes and leave TCP to the application; a server has neither excuse. Its close codes are
documented protocol (docs/protocol.md), so a different one is a bug, and RFC 6455 section 7.1.1
wants the server to close TCP first: one it leaves open is a descriptor held until the client
gives up. The close cases whose code matters (7.1.x, 7.9.x) already turn WRONG CODE into a FAILED
behaviour themselves; the close rule catches the rest.

``python -m tests.autobahn ws://127.0.0.1:PORT/echo`` runs the selection from a shell and prints
the same listing the test fails with (exit status 1 when a case fails).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 9.* are performance cases (up to 16 MiB messages), 12.* and 13.* are permessage-deflate, which
# roomcast does not negotiate. What is left (1-7 and 10) is the RFC 6455 protocol: 247 cases.
EXCLUDED = ("9.*", "12.*", "13.*")
SELECTED_CASES = 247
PASSING_BEHAVIOR = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
PASSING_CLOSE = frozenset({"OK", "INFORMATIONAL"})
# Cases mostly wait on the server or on their own timers (6.4.x pause 2 s, a server that does
# not close costs up to 10 s), not on CPU: running 16 at once keeps a clean run near 3 s and a
# badly broken one within a minute on a shared 2-core machine.
PARALLELISM = 16
TIMEOUT = 100.0  # seconds for a whole run; under pytest's 120 s test timeout


def case_sort_key(case_id: str) -> tuple[int, ...]:
    """1.2.10 after 1.2.9, 10.1.1 after 7.x."""
    return tuple(int(part) for part in case_id.split("."))


def _plain(text: str) -> str:
    """The case texts are HTML fragments: drop the tags, keep one line."""
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Verdict:
    """One case's outcome, as read back from kosoku's per-case report."""

    case_id: str
    behavior: str
    behavior_close: str
    description: str = ""
    expectation: str = ""
    result: str = ""
    result_close: str = ""
    received: tuple[Any, ...] = ()
    remote_close_code: int | None = None
    remote_close_reason: str | None = None
    was_clean: bool = False
    not_clean_reason: str | None = None
    closed_by_me: bool = False
    dropped_by_me: bool = False

    @property
    def passed(self) -> bool:
        return self.behavior in PASSING_BEHAVIOR and self.behavior_close in PASSING_CLOSE

    @classmethod
    def from_report(cls, case_id: str, report: dict[str, Any]) -> Verdict:
        return cls(
            case_id=case_id,
            behavior=report["behavior"],
            behavior_close=report["behaviorClose"],
            description=_plain(report.get("description") or ""),
            expectation=_plain(report.get("expectation") or ""),
            result=report.get("result") or "",
            result_close=report.get("resultClose") or "",
            received=tuple(report.get("received") or ()),
            remote_close_code=report.get("remoteCloseCode"),
            remote_close_reason=report.get("remoteCloseReason"),
            was_clean=bool(report.get("wasClean")),
            not_clean_reason=report.get("wasNotCleanReason"),
            closed_by_me=bool(report.get("closedByMe")),
            dropped_by_me=bool(report.get("droppedByMe")),
        )

    def observed(self) -> str:
        """What the server did, in one line: what came back, how it closed."""
        parts = []
        if self.received:
            events = []
            for event in self.received:
                if event[0] == "message":
                    kind = "binary" if event[2] else "text"
                    events.append(f"{kind} {_clip(str(event[1]), 70)!r}")
                else:
                    events.append(f"{event[0]} {_clip(str(event[1]), 30)!r}")
            parts.append("received " + ", ".join(events))
        else:
            parts.append("received no message")
        if self.remote_close_code is None:
            parts.append("server sent no CLOSE code")
        else:
            reason = f" {self.remote_close_reason!r}" if self.remote_close_reason else ""
            parts.append(f"server CLOSE {self.remote_close_code}{reason}")
        parts.append("kosoku closed first" if self.closed_by_me else "server closed first")
        if self.was_clean:
            parts.append("clean")
        else:
            parts.append(f"not clean ({self.not_clean_reason or 'no closing handshake'})")
        if self.dropped_by_me:
            parts.append("kosoku dropped TCP")
        return "; ".join(parts)

    def describe(self) -> str:
        verdicts = {self.result, self.result_close} - {""}
        return "\n".join(
            [
                f"{self.case_id}: {self.behavior} / close {self.behavior_close}"
                f" - {_clip(self.description)}",
                f"    expected: {_clip(self.expectation)}",
                f"    observed: {self.observed()}",
                f"    verdict:  {' / '.join(sorted(verdicts))}",
            ]
        )


@dataclass(frozen=True)
class Run:
    verdicts: dict[str, Verdict]  # in case order
    report_dir: Path
    seconds: float
    agent: str

    def failures(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts.values() if not verdict.passed]

    def summary(self) -> str:
        counts = Counter(
            (verdict.behavior, verdict.behavior_close) for verdict in self.verdicts.values()
        )
        tally = ", ".join(f"{b}/{c}: {n}" for (b, c), n in counts.most_common())
        failed = len(self.failures())
        return (
            f"{len(self.verdicts)} cases against {self.agent} in {self.seconds:.1f} s: "
            f"{len(self.verdicts) - failed} passed, {failed} failed (behavior/close: {tally}); "
            f"report: {self.report_dir / 'index.html'}"
        )

    def listing(self) -> str:
        return "\n".join([self.summary(), *(verdict.describe() for verdict in self.failures())])


def _kosoku() -> list[str]:
    script = Path(sys.executable).with_name("kosoku")
    if not script.exists():
        raise RuntimeError(f"kosoku is not installed beside {sys.executable} (make setup)")
    return [str(script)]


def selected_case_ids(
    include: Sequence[str] | None = None, exclude: Sequence[str] = EXCLUDED
) -> list[str]:
    """The ids a run with this selection must report on, from kosoku's own case index.

    Asked in a subprocess because importing the case index patches ``binascii`` and ``sys.path``
    for the vendored Python 2 cases, which is no business of the test process.
    """
    program = "import json, kosoku.cases; print(json.dumps(list(kosoku.cases.CASES)))"
    listing = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ids = json.loads(listing.stdout)
    if include:
        ids = [i for i in ids if any(fnmatch.fnmatchcase(i, pattern) for pattern in include)]
    ids = [i for i in ids if not any(fnmatch.fnmatchcase(i, pattern) for pattern in exclude)]
    return sorted(ids, key=case_sort_key)


def read_report(report_dir: Path) -> tuple[str, dict[str, Verdict]]:
    """The agent and every case's verdict from a report directory written by kosoku."""
    index = json.loads((report_dir / "index.json").read_text())
    if len(index) != 1:
        raise ValueError(f"expected one agent in {report_dir}/index.json, found {sorted(index)}")
    ((agent, cases),) = index.items()
    verdicts = {}
    for case_id in sorted(cases, key=case_sort_key):
        entry = cases[case_id]
        report = json.loads((report_dir / entry["reportfile"]).read_text())
        if (report["id"], report["behavior"], report["behaviorClose"]) != (
            case_id,
            entry["behavior"],
            entry["behaviorClose"],
        ):
            raise ValueError(f"{entry['reportfile']} disagrees with index.json about {case_id}")
        verdicts[case_id] = Verdict.from_report(case_id, report)
    return agent, verdicts


def run_cases(
    url: str,
    report_dir: Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = EXCLUDED,
    parallelism: int = PARALLELISM,
    timeout: float = TIMEOUT,
) -> Run:
    """Runs the selected cases against `url` and reads back every verdict.

    kosoku exits 0 when every case passed and 1 when some failed, with the report written either
    way; anything else (a bad argument, a crash, no report) raises here, so a run that did not
    happen can never read as a clean one.
    """
    command = [*_kosoku(), url, "--outdir", str(report_dir), "--parallelism", str(parallelism)]
    for pattern in include or ():
        command += ["--include", pattern]
    for pattern in exclude:
        command += ["--exclude", pattern]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    if done.returncode not in (0, 1) or not (report_dir / "index.json").exists():
        raise RuntimeError(
            f"kosoku did not complete (exit {done.returncode}): {command}\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    agent, verdicts = read_report(report_dir)
    run = Run(verdicts, report_dir, seconds, agent)
    if (done.returncode == 0) != (not run.failures()):
        # kosoku's exit status and our reading of its report must tell the same story.
        raise RuntimeError(
            f"kosoku exited {done.returncode} but the report shows "
            f"{len(run.failures())} failing cases\n{done.stderr[-2000:]}"
        )
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.autobahn",
        description="Run the Autobahn cases (1-7, 10 by default) against an echo server URL.",
    )
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8080/echo")
    parser.add_argument("-i", "--include", action="append", help="case id or glob (repeatable)")
    parser.add_argument(
        "-x", "--exclude", action="append", default=list(EXCLUDED), help="case id or glob"
    )
    parser.add_argument("-p", "--parallelism", type=int, default=PARALLELISM)
    parser.add_argument("-o", "--outdir", type=Path, help="report directory (default: a temp dir)")
    args = parser.parse_args(argv)
    report_dir = args.outdir or Path(tempfile.mkdtemp(prefix="autobahn-"))
    run = run_cases(
        args.url,
        report_dir,
        include=args.include,
        exclude=args.exclude,
        parallelism=args.parallelism,
    )
    print(run.listing())
    return 1 if run.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
