"""Rebalance timings of the two consumer group protocols, with real ``foodpipe consume``.

Run it against the stack the settings name (the local stack: ``scripts/local_stack.sh
env`` exported), from a source checkout::

    python -m foodpipe.bench.groups --runs 3 --out bench/results

For each protocol (``classic`` with cooperative-sticky, ``consumer``/KIP-848) and each
run, on a fresh 3-partition topic and a fresh group, with no orders flowing (so only
the group protocol is timed, not the batch in flight):

- **scale-out**: 1 → 2 → 3 members. Time from the new member's ``joining the group``
  log line (its start-up checks done) until every member owns a partition and the
  three partitions are owned once each.
- **crash takeover**: SIGKILL one of 3 members; time until the 2 others own all three
  partitions. Bounded below by the session timeout (``--session-ms``, Compose's 10 s).
- **quick restart**: 2 members; one is stopped (SIGTERM, as a deploy; SIGKILL, as a
  crash) and started again at once, with and without static membership
  (``KAFKA_GROUP_INSTANCE_ID=auto``). Counted: the rebalance callbacks the *other*
  member saw (0 = no rebalance), and the time from the stop until both members own
  their partitions again. A process that exits non-zero is started again, as Compose's
  ``restart: on-failure`` would, and counted.

Times come from the members' own JSON log lines (``ts``) and the wall clock of the
signal, on one machine. Results: ``<out>/<date>-group-protocols.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient

from foodpipe.bench.conditions import busy_pct
from foodpipe.bench.pipeline import BenchError, wait_for
from foodpipe.bench.procs import FoodpipeProcess, child_env
from foodpipe.bench.scratch import ScratchTopics
from foodpipe.bench.stats import summarize
from foodpipe.kafka import admin_config, wait_for_broker
from foodpipe.settings import Settings, load_settings

PROTOCOLS = ("classic", "consumer")
PARTITIONS = 3
#: Longest wait for any one step; a crash takeover takes a session timeout and more.
STEP_TIMEOUT_S = 120.0


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


@dataclass
class Member:
    """One ``foodpipe consume`` replica, restarted like ``restart: on-failure``."""

    name: str
    env: dict[str, str]
    workdir: Path
    proc: FoodpipeProcess | None = None
    restarts: int = 0

    def start(self) -> None:
        log = self.workdir / f"{self.name}.log"
        self.proc = FoodpipeProcess(["consume"], self.env, log)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def events(self) -> list[dict[str, Any]]:
        if self.proc is None:
            return []
        return list(self.proc.log_events())

    def supervise(self) -> None:
        """Start again after a non-zero exit (a fenced static member, say)."""
        if self.proc is not None and not self.proc.running and self.proc.proc.returncode != 0:
            self.restarts += 1
            self.start()

    def signal(self, signum: int) -> float:
        assert self.proc is not None
        at = time.time()
        self.proc.proc.send_signal(signum)
        self.proc.wait(30)
        return at

    def stop(self) -> None:
        if self.proc is not None and self.proc.running:
            self.proc.stop(30)


def _owned(events: list[dict[str, Any]], until: float | None = None) -> set[str]:
    """What the member owned after its last assignment callback (before ``until``)."""
    owned: set[str] = set()
    for event in events:
        text = str(event.get("event", ""))
        if not text.startswith("partitions ") or (until is not None and _ts(event) > until):
            continue
        owned = set(event.get("owned") or [])
    return owned


def _callbacks_after(events: list[dict[str, Any]], since: float) -> int:
    return sum(
        1
        for event in events
        if str(event.get("event", "")).startswith("partitions ") and _ts(event) > since
    )


def _joined_at(member: Member, after: float = 0.0) -> float | None:
    for event in member.events():
        if event.get("event") == "joining the group" and _ts(event) >= after:
            return _ts(event)
    return None


def _balanced(members: list[Member]) -> float | None:
    """When the group became balanced (each member owns >= 1, each partition once)."""
    streams = [member.events() for member in members]
    owned_sets = [_owned(events) for events in streams]
    if not all(owned_sets):
        return None
    union: set[str] = set().union(*owned_sets)
    if len(union) != PARTITIONS or sum(len(s) for s in owned_sets) != PARTITIONS:
        return None
    last = [
        _ts(event)
        for events in streams
        for event in events
        if str(event.get("event", "")).startswith("partitions ")
    ]
    return max(last)


def _covered_after(members: list[Member], since: float) -> float | None:
    """When ``members`` together owned every partition again, after ``since``."""
    streams = [member.events() for member in members]
    owned = set().union(*(_owned(events) for events in streams))
    if len(owned) != PARTITIONS:
        return None
    moments = [
        _ts(event)
        for events in streams
        for event in events
        if str(event.get("event", "")).startswith("partitions ") and _ts(event) > since
    ]
    return max(moments) if moments else None


class GroupBench:
    """One protocol's scenarios on the stack ``settings`` names."""

    def __init__(self, settings: Settings, admin: AdminClient, workdir: Path, session_ms: int):
        self.settings = settings
        self.admin = admin
        self.workdir = workdir
        self.session_ms = session_ms

    def _members(
        self, protocol: str, count: int, static: bool, tag: str
    ) -> tuple[ScratchTopics, list[Member]]:
        unique = f"gp-{tag}-{uuid.uuid4().hex[:8]}"
        topics = ScratchTopics(self.admin, unique, PARTITIONS)
        topic = topics.create("orders")
        dlq = topics.create("dlq")
        env = child_env(
            self.settings,
            KAFKA_TOPIC=topic,
            KAFKA_DLQ_TOPIC=dlq,
            KAFKA_CONSUMER_GROUP=unique,
            KAFKA_GROUP_PROTOCOL=protocol,
            KAFKA_GROUP_INSTANCE_ID="auto" if static else "",
            KAFKA_SESSION_TIMEOUT_MS=str(self.session_ms),
            METRICS_PORT="0",
        )
        members = [Member(f"{unique}-{i}", env, self.workdir) for i in range(count)]
        return topics, members

    def _wait(self, what: str, check: Callable[[], float | None], members: list[Member]) -> float:
        def probe() -> float | None:
            for member in members:
                member.supervise()
            return check()

        return float(wait_for(probe, STEP_TIMEOUT_S, what, interval_s=0.2))

    def scale_and_crash(self, protocol: str) -> dict[str, float]:
        topics, members = self._members(protocol, 3, static=False, tag="scale")
        try:
            result: dict[str, float] = {}
            members[0].start()
            self._wait("1 member owning 3 partitions", lambda: _balanced(members[:1]), members[:1])
            for n in (2, 3):
                new = members[n - 1]
                new.start()
                joined = self._wait(f"member {n} joining", partial(_joined_at, new), [new])
                done = self._wait(
                    f"{n} members balanced", partial(_balanced, members[:n]), members[:n]
                )
                result[f"scale_{n - 1}_to_{n}_s"] = done - joined
            killed_at = members[2].signal(signal.SIGKILL)
            done = self._wait(
                "2 members owning all partitions",
                lambda: _covered_after(members[:2], killed_at),
                members[:2],
            )
            result["crash_takeover_s"] = done - killed_at
            return result
        finally:
            for member in members:
                member.stop()
            topics.close()

    def quick_restart(self, protocol: str, static: bool, signum: int) -> dict[str, float]:
        kind = "term" if signum == signal.SIGTERM else "kill"
        topics, members = self._members(protocol, 2, static=static, tag=f"restart-{kind}")
        try:
            for member in members:
                member.start()
            self._wait("2 members balanced", lambda: _balanced(members), members)
            other, restarted = members
            stopped_at = restarted.signal(signum)
            restarted.start()
            done = self._wait(
                "the restarted member owning partitions again",
                lambda: _back(restarted, other, stopped_at),
                members,
            )
            return {
                "back_s": done - stopped_at,
                "other_member_callbacks": float(_callbacks_after(other.events(), stopped_at)),
                "restarts_after_exit": float(restarted.restarts),
            }
        finally:
            for member in members:
                member.stop()
            topics.close()


def _back(restarted: Member, other: Member, since: float) -> float | None:
    """When the restarted member owned partitions again and the group was whole."""
    events = restarted.events()
    assigned = [
        _ts(e)
        for e in events
        if str(e.get("event", "")).startswith("partitions assigned") and _ts(e) > since
    ]
    if not assigned or not _owned(events):
        return None
    if _balanced([restarted, other]) is None:
        return None
    return max(assigned)


def run(settings: Settings, runs: int, session_ms: int, workdir: Path) -> dict[str, Any]:
    admin = AdminClient(admin_config(settings))
    wait_for_broker(admin, settings, 30)
    bench = GroupBench(settings, admin, workdir, session_ms)
    # Others share this machine: say how busy it was before the runs.
    conditions = {
        "cpu_count": os.cpu_count() or 0,
        "cpu_busy_pct_before": round(busy_pct(), 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "bootstrap": settings.kafka_bootstrap_servers,
    }
    raw: dict[str, dict[str, list[float]]] = {p: {} for p in PROTOCOLS}
    for index in range(runs):
        # Alternate the order so that neither protocol always runs on a warmer machine.
        order = PROTOCOLS if index % 2 == 0 else tuple(reversed(PROTOCOLS))
        for protocol in order:
            sys.stderr.write(f"run {index + 1}/{runs}: {protocol}\n")
            values = dict(bench.scale_and_crash(protocol))
            for static in (False, True):
                for signum, kind in ((signal.SIGTERM, "sigterm"), (signal.SIGKILL, "sigkill")):
                    label = f"restart_{kind}_{'static' if static else 'dynamic'}"
                    for key, value in bench.quick_restart(protocol, static, signum).items():
                        values[f"{label}_{key}"] = value
            for key, value in values.items():
                raw[protocol].setdefault(key, []).append(value)
            sys.stderr.write(json.dumps({protocol: values}) + "\n")
    return {
        "kind": "group-protocols",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": runs,
        "session_timeout_ms": session_ms,
        "conditions": conditions,
        "results": {
            protocol: {key: summarize(values).to_dict() for key, values in metrics.items()}
            for protocol, metrics in raw.items()
        },
    }


#: Row labels of the Markdown table, in order.
LABELS = {
    "scale_1_to_2_s": "scale-out 1 → 2 members: joined → balanced",
    "scale_2_to_3_s": "scale-out 2 → 3 members: joined → balanced",
    "crash_takeover_s": "crash (SIGKILL 1 of 3): kill → the other 2 own all partitions",
    "restart_sigterm_dynamic_back_s": "restart after SIGTERM, dynamic: stop → back and balanced",
    "restart_sigterm_dynamic_other_member_callbacks": "… rebalance callbacks at the other member",
    "restart_sigterm_static_back_s": "restart after SIGTERM, static: stop → back and balanced",
    "restart_sigterm_static_other_member_callbacks": "… rebalance callbacks at the other member",
    "restart_sigkill_dynamic_back_s": "restart after SIGKILL, dynamic: kill → back and balanced",
    "restart_sigkill_dynamic_other_member_callbacks": "… rebalance callbacks at the other member",
    "restart_sigkill_static_back_s": "restart after SIGKILL, static: kill → back and balanced",
    "restart_sigkill_static_other_member_callbacks": "… rebalance callbacks at the other member",
    "restart_sigkill_static_restarts_after_exit": "… times the restarted member exited (fenced)",
}


def render_markdown(document: dict[str, Any]) -> str:
    results = document["results"]
    lines = [
        f"# Consumer group protocols: rebalance timings ({document['date'][:10]})",
        "",
        "`python -m foodpipe.bench.groups --runs 3` (its docstring says what each row"
        f" times): {document['runs']} runs per protocol, session timeout"
        f" {document['session_timeout_ms']} ms, one broker, a 3-partition topic, no orders"
        " flowing; real `foodpipe consume` processes. Median (min-max). The restart rows"
        " include the new process's start-up (Python imports, the broker and database"
        " checks), several seconds on this shared machine.",
        "",
        "| measurement | classic (cooperative-sticky) | consumer (KIP-848, uniform) |",
        "| --- | --- | --- |",
    ]
    for key, label in LABELS.items():
        cells = []
        for protocol in PROTOCOLS:
            entry = results[protocol].get(key)
            if entry is None:
                cells.append("-")
                continue
            unit = " s" if key.endswith("_s") else ""
            cells.append(f"{entry['median']:.1f}{unit} ({entry['min']:.1f}-{entry['max']:.1f})")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    conditions = ", ".join(f"{k} {v}" for k, v in sorted(document["conditions"].items()))
    lines += ["", f"Conditions: {conditions}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foodpipe.bench.groups")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--session-ms", type=int, default=10_000, help="session timeout (default 10000)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only write the .md of an earlier run's .json"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        args.render.with_suffix(".md").write_text(
            render_markdown(json.loads(args.render.read_text()))
        )
        return 0
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="foodpipe-groups-") as tmp:
        try:
            document = run(settings, args.runs, args.session_ms, Path(tmp))
        except BenchError as exc:
            sys.stderr.write(f"group bench failed: {exc}\n")
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{document['date'][:10]}-group-protocols"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(document))
    sys.stdout.write(f"wrote {stem}.json and {stem}.md\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
