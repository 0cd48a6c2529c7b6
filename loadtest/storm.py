"""The reconnect storm's figures: what each Locust process reports per phase, merged into one
round (docs/loadtest.md, scenario ``storm``).

A storm round, run by the conductor (the master, or the single local process) through Locust's
custom messages to every process that runs users (the performers): loadtest/stormconductor.py
and loadtest/stormperformer.py; the messages' names are ``COMMAND`` and ``REPLY`` below:

1. ``drop``: every storm user's connection dies at once (an RST, no CLOSE);
2. the publishers chat on for ``--storm-outage`` seconds;
3. ``reconnect``: every user opens a new connection (to the next node with several
   ``--storm-hosts``), and the conductor waits for all of them;
4. ``resume``: at one instant every user sends its ``join`` with ``since`` its position;
5. after ``--storm-tail`` seconds of live chat, ``live``: each user must have had live chats
   since its welcome, and its chats (replayed and live) must have had no gap, no duplicate
   and no mismatch (loadtest/resume.py).

Each phase's replies are dicts (they travel as msgpack between Locust processes); ``merge``
sums them and ``round_figures`` makes the round's figures. No gevent and no Locust here: the
tests import this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loadtest.fanout import Histogram

COMMAND = "roomcast_storm_command"  # Locust custom message: conductor -> performers
REPLY = "roomcast_storm_reply"  # performers -> conductor
PHASES = ("ready", "dropped", "connected", "resumed", "live")
# fields of a phase reply that are summed, taken as the latest time, or merged
SUMMED = (
    "users", "clients", "ok", "failed", "sent", "welcomed", "recovered", "not_recovered",
    "no_history", "join_failed", "moved", "replayed", "live_again", "checked", "gaps", "missing",
    "duplicates", "mismatched",
)
LATEST = ("last_at", "last_history_at", "last_welcome_at")


def merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One reply per process -> one: counts summed, the latest of each time, histograms and
    reasons merged."""
    out: dict[str, Any] = {}
    live = Histogram()
    reasons: dict[str, int] = {}
    for part in parts:
        for key in SUMMED:
            value = part.get(key)
            if isinstance(value, int):
                out[key] = out.get(key, 0) + value
        for key in LATEST:
            value = part.get(key)
            if isinstance(value, (int, float)):
                out[key] = max(out.get(key, value), value)
        hist = part.get("live_ms")
        if isinstance(hist, dict):
            live.merge(Histogram.from_wire(hist))
        got = part.get("reasons")
        if isinstance(got, dict):
            for reason, count in got.items():
                reasons[str(reason)] = reasons.get(str(reason), 0) + int(count)
    out["live_ms"] = live
    out["reasons"] = reasons
    return out


def _ms(later: Any, earlier: float | None) -> float | None:
    if not isinstance(later, (int, float)) or earlier is None:
        return None
    return round(max(0.0, later - earlier) * 1000.0, 1)


def round_figures(
    number: int,
    *,
    dropped: Mapping[str, Any],
    connected: Mapping[str, Any],
    resumed: Mapping[str, Any],
    live: Mapping[str, Any],
    reconnect_at: float | None,
    resume_at: float | None,
    server_cpu_s: float | None = None,
    counted_before: Mapping[str, float] | None = None,
    counted_after: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The figures of storm round ``number`` from its merged phase replies.

    ``reconnect_at`` and ``resume_at`` are the wall-clock instants of the reconnect command and
    of the resume (every ``join`` with ``since`` goes out then); the replies carry the wall
    clock of the last connection made, the last ``history`` answer and the last welcome, so one
    machine's clock (or synchronised clocks) is assumed.
    """
    clients = int(dropped.get("clients", 0))
    welcomed = int(resumed.get("welcomed", 0))
    hist = resumed.get("live_ms")
    if not isinstance(hist, Histogram):
        hist = Histogram()
    fig: dict[str, Any] = {
        "round": number,
        "clients": clients,
        "reconnected": int(connected.get("ok", 0)),
        "reconnect_failed": clients - int(connected.get("ok", 0)),
        "reconnect_ms": _ms(connected.get("last_at"), reconnect_at),
        "resumes_sent": int(resumed.get("sent", 0)),
        "welcomed": welcomed,
        "recovered": int(resumed.get("recovered", 0)),
        "not_recovered": int(resumed.get("not_recovered", 0)),
        "no_history": int(resumed.get("no_history", 0)),
        "join_failed": int(resumed.get("join_failed", 0)),
        "resumed_on_other_node": int(resumed.get("moved", 0)),
        "reasons": dict(resumed.get("reasons") or {}),
        "replayed": int(resumed.get("replayed", 0)),
        "replayed_per_client": round(int(resumed.get("replayed", 0)) / welcomed, 1)
        if welcomed else None,
        "all_history_ms": _ms(resumed.get("last_history_at"), resume_at),
        "all_resumed_ms": _ms(resumed.get("last_welcome_at"), resume_at),
        "live_p50_ms": hist.percentile(0.50),
        "live_p99_ms": hist.percentile(0.99),
        "live_max_ms": round(hist.maximum, 1) if hist.total else None,
        "live_again": int(live.get("live_again", 0)),
        "gaps": int(live.get("gaps", 0)),
        "missing": int(live.get("missing", 0)),
        "duplicates": int(live.get("duplicates", 0)),
        "mismatched": int(live.get("mismatched", 0)),
        "server_cpu_ms": None if server_cpu_s is None else round(server_cpu_s * 1000.0, 1),
        "cpu_per_resume_us": None if server_cpu_s is None or not welcomed
        else round(server_cpu_s * 1e6 / welcomed, 1),
    }
    if counted_before and counted_after:
        for key in ("resumes", "resumes_recovered"):
            if key in counted_before and key in counted_after:
                fig[f"server_counted_{key}"] = int(counted_after[key] - counted_before[key])
    fig["complete"] = clients > 0 and welcomed == clients
    fig["lossless"] = lossless(fig)
    return fig


def lossless(fig: Mapping[str, Any]) -> bool:
    """Every client reconnected, resumed with ``recovered: true`` and was live again, and not one
    chat was missing, duplicated or out of place."""
    clients = fig.get("clients", 0)
    return bool(
        clients
        and fig.get("reconnected") == clients
        and fig.get("welcomed") == clients
        and fig.get("recovered") == clients
        and fig.get("live_again") == clients
        and fig.get("gaps") == 0
        and fig.get("duplicates") == 0
        and fig.get("mismatched") == 0
    )


def problems(fig: Mapping[str, Any]) -> list[str]:
    """What went wrong in a round, one short text each (empty when lossless)."""
    clients = fig.get("clients", 0)
    out: list[str] = []
    if not clients:
        return ["no client took part"]
    if fig.get("reconnect_failed"):
        out.append(f"{fig['reconnect_failed']} of {clients} did not reconnect")
    if fig.get("welcomed", 0) < fig.get("reconnected", 0):
        out.append(f"{fig['reconnected'] - fig['welcomed']} of {fig['reconnected']} were not "
                   "welcomed back")
    if fig.get("recovered", 0) < fig.get("welcomed", 0):
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(fig.get("reasons", {}).items()))
        out.append(f"{fig['welcomed'] - fig['recovered']} of {fig['welcomed']} not recovered"
                   + (f" ({reasons})" if reasons else ""))
    if fig.get("live_again", 0) < fig.get("welcomed", 0):
        out.append(f"{fig['welcomed'] - fig['live_again']} of {fig['welcomed']} got no live "
                   "chat after the resume")
    for key, what in (("gaps", "gaps"), ("duplicates", "duplicates"), ("mismatched",
                                                                       "mismatched chats")):
        if fig.get(key):
            out.append(f"{fig[key]} {what}")
    return out


def summary(rounds: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """The storm's part of ``*_summary.json``: the context (nodes, rooms...), every round, and
    whether every round was lossless."""
    return {
        **context,
        "rounds": rounds,
        "lossless": bool(rounds) and all(r.get("lossless") for r in rounds),
    }
