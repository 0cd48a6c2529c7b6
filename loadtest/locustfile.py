"""Locust swarms for roomcast (docs/loadtest.md): the file to give to ``locust -f``, which
Locust reads its user classes from, and the event listeners that connect Locust's events to the
harness (its parameters, the scenario's user classes, each process's state, the run monitor and
the storm's custom messages).

    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080            # web UI on :8089
    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080 --headless -u 2000 -r 100 -t 2m
    SCENARIO=capacity locust -f loadtest/locustfile.py ...                   # or --tags capacity

User classes (scenarios), imported here because Locust takes the User classes it finds in this
module's namespace (in this order: its web UI and ``--list`` show them so):

* ``HoldUser`` (``capacity``): holds one idle, joined connection; checks it every 20-30 s and
  reconnects when it was closed (loadtest/users.py, like the next two).
* ``FanoutUser`` (``fanout``): rooms of ``--fanout-room-size`` members; the first member of each
  room publishes stamped messages at ``--fanout-rate`` per second, the others listen.
* ``ChatUser`` (``swarm``): rooms of ``--room-sizes``; most users only listen, a share
  (``--chat-fraction``) chats every ``--chat-interval`` seconds on average, and every user leaves
  its room after about ``--session-seconds`` to join another one or to reconnect later.
* ``ResumeUser`` (``resume``, loadtest/resumeuser.py): rooms of ``--resume-room-size``; the
  first member chats at ``--resume-rate`` and stays; every other member's connection drops (an
  RST) after about ``--resume-interval`` seconds, and after about ``--resume-offline`` seconds
  it reconnects and joins with ``since`` its position. Every chat's ``seq`` is checked
  (loadtest/resume.py).
* ``StormUser`` (``storm``, loadtest/stormuser.py): the reconnect storm. Users join rooms of
  ``--storm-room-size`` (each room has one publisher connection of the process, chatting at
  ``--storm-rate``); once all have joined, every user's connection dies at the same instant,
  they all reconnect (to the next of ``--storm-hosts``), and then all send their ``join`` with
  ``since`` at once. The conductor (the master, or the local runner; loadtest/stormconductor.py)
  paces the phases through Locust's custom messages to each process's performer
  (loadtest/stormperformer.py); after ``--storm-rounds`` storms the run stops.

Request types in the reports: ``WS`` (connect, join, send, and failures: closed, receive),
``FANOUT`` (per-receipt latency, a bounded sample; last member latency, one per message) and
``RESUME`` (``resume``: join with ``since`` to welcome, failed when not ``recovered`` or
without a ``history`` answer; ``gap`` and ``duplicate``: always failures, one per chat sequence
that skipped or repeated seqs; ``mismatch`` in storm rooms) and ``STORM`` (one per storm
round: ``reconnect``, ``all resumed``, ``live again``; failed when the round was not lossless).

This module must stay the only one that registers listeners, and no module may import it:
Locust imports it by its path as ``locustfile``, and a second import as ``loadtest.locustfile``
would register every listener twice.
"""

from __future__ import annotations

import sys
from typing import Any

from locust import events
from locust.env import Environment
from locust.rpc.protocol import Message
from locust.runners import MasterRunner, WorkerRunner

from loadtest import process, resumeuser, storm, stormuser, users
from loadtest.monitor import RunMonitor
from loadtest.settings import Settings, add_arguments, selected_scenario

# Locust takes the (non-abstract) User classes it finds in this module's namespace
HoldUser = users.HoldUser
FanoutUser = users.FanoutUser
ChatUser = users.ChatUser
ResumeUser = resumeuser.ResumeUser
StormUser = stormuser.StormUser

SCENARIO_CLASSES = {
    "capacity": {"HoldUser"},
    "fanout": {"FanoutUser"},
    "swarm": {"ChatUser"},
    "resume": {"ResumeUser"},
    "storm": {"StormUser"},
    # the default mix; `resume` runs on its own (SCENARIO=resume), so that the reference
    # runs of the other scenarios keep their shape
    "all": {"HoldUser", "FanoutUser", "ChatUser"},
}

_monitor: RunMonitor | None = None

try:  # a misspelt SCENARIO is a one-line error before Locust starts, not a traceback in a hook
    selected_scenario()
except ValueError as bad_scenario:
    sys.exit(f"locust: {bad_scenario}")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    """Keeps only the user classes of the chosen scenario (SCENARIO variable and/or --tags)."""
    wanted = set(SCENARIO_CLASSES[selected_scenario()])
    tags = getattr(environment.parsed_options, "tags", None) if environment.parsed_options else None
    if tags:
        wanted &= set().union(*(SCENARIO_CLASSES.get(t, set()) for t in tags))
    kept = [cls for cls in environment.user_classes if cls.__name__ in wanted]
    if not kept:
        raise ValueError(f"no user class left for SCENARIO={selected_scenario()} and tags={tags}")
    environment.user_classes[:] = kept
    if environment.available_user_classes:
        for name in list(environment.available_user_classes):
            if name not in wanted:
                del environment.available_user_classes[name]
    runner = environment.runner
    if runner is not None and selected_scenario() == "storm":
        # the storm's phases: conductor (master or local) -> performers (workers or local)
        if not isinstance(runner, MasterRunner):
            runner.register_message(storm.COMMAND, _on_storm_command)
        if not isinstance(runner, WorkerRunner):
            runner.register_message(storm.REPLY, _on_storm_reply)


def _on_storm_command(environment: Environment, msg: Message, **_kwargs: Any) -> None:
    state = process.current()
    if state is not None and state.storm is not None and isinstance(msg.data, dict):
        state.storm.on_command(msg.data)


def _on_storm_reply(environment: Environment, msg: Message, **_kwargs: Any) -> None:
    if _monitor is not None and _monitor.conductor is not None and isinstance(msg.data, dict):
        _monitor.conductor.on_reply(str(msg.node_id), msg.data)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    global _monitor
    settings = Settings.from_options(environment.parsed_options)
    if not isinstance(environment.runner, MasterRunner):
        process.restart(environment, settings)
    if not isinstance(environment.runner, WorkerRunner):
        if _monitor is not None:
            _monitor.stop()
        _monitor = RunMonitor(environment, settings, selected_scenario())


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    state = process.current()
    if state is not None:
        state.stop()
    if _monitor is not None:
        _monitor.write()
        _monitor.stop()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    if _monitor is not None and isinstance(environment.runner, MasterRunner):
        _monitor.write()  # again: the workers' final reports may have arrived since test_stop


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any]) -> None:
    state = process.current()
    if state is not None:
        data["roomcast"] = {"held": state.held, "fanout": state.tracker.take_delta(),
                            "resume": state.resumes.take()}


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any]) -> None:
    if _monitor is not None:
        _monitor.on_worker_report(client_id, data)
