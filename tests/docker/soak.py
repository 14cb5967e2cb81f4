"""The plan's success criterion, measured: stable for an hour of continuous running.

``docker-compose -f docker-compose.aws.yml up -d`` with its real limits, at the default
rate (10 orders/s), for ``--minutes`` (60 for the committed run), with two events on
the way:

- at 1/6 of the run, the consumer crashes (SIGKILL from inside its container) and the
  restart policy brings it back;
- at 1/4, ``--scale consumer=2``, held for 1/12 of the run, then back to 1.

Every ``--period`` seconds (10) each container's memory (working set, and its anonymous,
shared and file-cache parts), CPU, open file descriptors and threads are sampled, with
the group's lag and the consumers' restart count. The report gives each series' start,
end and slope; the slope that decides "flat" is taken over the steady part after the
last event (from 1/3 of the run to the end), where nothing restarts. The run ends with
``foodpipe audit``.

One command (it starts the engine and builds the images when needed):

    scripts/soak.sh 60            # or: .venv/bin/python -m tests.docker.soak --minutes 60

The docker suite runs it for 2 minutes as a smoke test (test_compose_aws.py).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support import wait_until

from .footprint import AWS_FILE, ONE_SHOTS, SERVICES
from .harness import (
    MIB,
    Checkout,
    crash_consumer,
    engine_and_images,
    inspect,
    memory_reading,
    process_reading,
    running_containers,
    wait_healthy,
    write_results,
)

#: memory_mib is the working set (what `docker stats` shows); the next three break the
#: container's usage down so that a drift can be told apart (see harness.memory_reading).
METRICS = (
    "memory_mib",
    "anon_mib",
    "shmem_mib",
    "file_cache_mib",
    "active_file_mib",
    "cpu_pct",
    "fds",
    "threads",
)


@dataclass
class Soak:
    checkout: Checkout
    period: float
    started: float = field(default_factory=time.monotonic)
    #: (seconds since start, container name) -> metric values
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: seconds since start, lag, consumer members, consumer restarts
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _cpu: dict[str, tuple[float, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> float:
        return time.monotonic() - self.started

    def event(self, name: str, **detail: Any) -> None:
        self.events.append({"t": round(self.now(), 1), "event": name, **detail})
        print(f"soak: {self.now():7.1f}s {name} {detail or ''}", flush=True)

    def sample(self) -> None:
        t = self.now()
        for cid, service, name, oneoff in running_containers(self.checkout.project):
            if oneoff:
                continue
            memory, procs = memory_reading(cid), process_reading(cid)
            if memory is None or procs is None:
                continue
            last = self._cpu.get(cid)
            self._cpu[cid] = (t, memory["cpu_ns"])
            cpu = None
            if last and t > last[0] and memory["cpu_ns"] >= last[1]:
                cpu = round((memory["cpu_ns"] - last[1]) / 1e9 / (t - last[0]) * 100, 1)
            self.samples.append(
                {
                    "t": round(t, 1),
                    "container": name,
                    "service": service,
                    "memory_mib": round(memory["working_set"] / MIB, 1),
                    "anon_mib": round(memory["anon"] / MIB, 1),
                    "shmem_mib": round(memory["shmem"] / MIB, 1),
                    "file_cache_mib": round(memory["file_cache"] / MIB, 1),
                    "active_file_mib": round(memory["active_file"] / MIB, 1),
                    "cpu_pct": cpu,
                    "fds": procs["fds"],
                    "threads": procs["threads"],
                }
            )
        status = self.checkout.status()
        group = status.get("group") or {}
        restarts = sum(
            inspect(cid)["RestartCount"] for cid in self.checkout.container_ids("consumer")
        )
        self.pipeline.append(
            {
                "t": round(t, 1),
                "lag": status.get("lag"),
                "members": len(group.get("members", [])),
                "consumer_restarts": restarts,
            }
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))

    def until(self, seconds: float) -> None:
        """Let the pipeline run until ``seconds`` into the soak (the load's duration)."""
        wait_until(lambda: self.now() >= seconds, timeout=seconds - self.now() + 30, interval=1)

    def lag_zero(self, what: str) -> float:
        began = self.now()
        wait_until(
            lambda: self.checkout.status().get("lag") == 0,
            timeout=300,
            interval=1,
            message=f"lag back to 0 after {what}",
        )
        return round(self.now() - began, 1)

    def run(self, minutes: float) -> None:
        total = minutes * 60
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            self.until(total / 6)
            (cid,) = self.checkout.container_ids("consumer")
            restarts = inspect(cid)["RestartCount"]
            self.event("consumer crashed (SIGKILL inside its container)")
            crash_consumer(cid)
            wait_until(
                lambda: inspect(cid)["RestartCount"] > restarts,
                timeout=60,
                interval=0.5,
                message="the consumer restarted",
            )
            self.event("consumer restarted by the restart policy")
            self.event("lag back to 0", seconds=self.lag_zero("the crash"))

            self.until(total / 4)
            self.event("scale consumer=2")
            self.checkout.compose("up", "-d", "--scale", "consumer=2", timeout=300)
            wait_until(
                lambda: len((self.checkout.status().get("group") or {}).get("members", [])) == 2,
                timeout=120,
                interval=1,
                message="2 members",
            )
            self.event("2 members")
            self.until(total / 4 + total / 12)
            self.event("scale consumer=1")
            self.checkout.compose("up", "-d", "--scale", "consumer=1", timeout=300)
            self.event("lag back to 0", seconds=self.lag_zero("scaling back"))
            self.until(total)
        finally:
            self._stop.set()
            thread.join(timeout=60)


def _fit(points: list[tuple[float, float]]) -> float:
    """Least-squares slope, per hour."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def analyse(soak: Soak, minutes: float) -> dict[str, Any]:
    steady_from = minutes * 60 / 3
    series: dict[str, dict[str, Any]] = {}
    for name in sorted({s["container"] for s in soak.samples}):
        rows = [s for s in soak.samples if s["container"] == name]
        entry: dict[str, Any] = {"samples": len(rows), "service": rows[0].get("service")}
        for metric in METRICS:
            values = [(s["t"], float(s[metric])) for s in rows if s[metric] is not None]
            if not values:
                continue
            steady = [(t, v) for t, v in values if t >= steady_from]
            head, tail = values[:3], values[-3:]
            entry[metric] = {
                "start": round(sum(v for _, v in head) / len(head), 1),
                "end": round(sum(v for _, v in tail) / len(tail), 1),
                "min": min(v for _, v in values),
                "max": max(v for _, v in values),
                "slope_per_h": round(_fit(values), 2),
                "steady_slope_per_h": round(_fit(steady), 2),
                "steady_mean": round(sum(v for _, v in steady) / len(steady), 1)
                if steady
                else None,
            }
        series[name] = entry
    lags = [p["lag"] for p in soak.pipeline if p["lag"] is not None]
    return {
        "series": series,
        "max_lag": max(lags) if lags else None,
        "final_lag": lags[-1] if lags else None,
    }


#: Services whose page cache and shared memory hold data that grows by design: Kafka's
#: log and PostgreSQL's orders table grow at 10 orders/s, and the pages read or written
#: stay cached (PostgreSQL's shared_buffers up to their 256 MB, the rest until the kernel
#: needs them). Their working set may follow that growth; their anonymous memory may not.
DATA_GROWS = ("kafka", "postgres")


def _drift(entry: dict[str, Any], metric: str, floor: float) -> tuple[float, float] | None:
    """(steady slope/h, allowed ±/h) when ``metric`` drifts beyond noise, else None."""
    data = entry.get(metric)
    if not data or data["steady_mean"] is None:
        return None
    allowed = max(floor, 0.05 * data["steady_mean"])
    if abs(data["steady_slope_per_h"]) <= allowed:
        return None
    return data["steady_slope_per_h"], allowed


def flatness(analysis: dict[str, Any], minutes: float) -> tuple[list[str], list[str]]:
    """Memory and descriptors flat within noise over the steady part (runs of 30+ min).

    Returns (problems, explained). Anonymous memory, descriptors and threads must be flat
    in every container; so must the working set, except in a DATA_GROWS service whose
    anonymous memory is flat: there the working set's drift is the cache of data that
    grows by design (shared memory plus active page cache), reported under ``explained``
    with its split, not hidden.
    """
    if minutes < 30:
        return [], []
    problems: list[str] = []
    explained: list[str] = []
    for name, entry in analysis["series"].items():
        if "_producer_run_" in name or "consumer_2" in name or "consumer-2" in name:
            continue
        anon = _drift(entry, "anon_mib", 8.0)
        for metric, floor in (
            ("memory_mib", 8.0),
            ("anon_mib", 8.0),
            ("fds", 5.0),
            ("threads", 3.0),
        ):
            drift = _drift(entry, metric, floor)
            if drift is None:
                continue
            slope, allowed = drift
            text = (
                f"{name} {metric} drifts {slope}/h over the steady part (allowed ±{allowed:.1f}/h)"
            )
            if metric == "memory_mib" and anon is None and entry.get("service") in DATA_GROWS:
                split = ", ".join(
                    f"{part} {entry[part]['steady_slope_per_h']}/h"
                    for part in ("anon_mib", "shmem_mib", "active_file_mib", "file_cache_mib")
                    if part in entry
                )
                explained.append(f"{text}: cache of data that grows by design ({split})")
            else:
                problems.append(text)
    return problems, explained


def soak(checkout: Checkout, minutes: float, period: float) -> dict[str, Any]:
    checkout.compose("up", "-d", timeout=900)
    wait_healthy(checkout, SERVICES, ONE_SHOTS, timeout=400)
    runner = Soak(checkout, period)
    runner.event("all services healthy; 10 orders/s")
    runner.run(minutes)
    report = checkout.audit(allow_lag=True)
    runner.event("audit", ok=bool(report["ok"]), rows=report["rows"], lost=report["lost"])
    analysis = analyse(runner, minutes)
    flat_problems, flat_explained = flatness(analysis, minutes)
    details = [inspect(cid) for service in SERVICES for cid in checkout.container_ids(service)]
    states = {
        d["Name"].lstrip("/"): {
            "oom_killed": d["State"]["OOMKilled"],
            "restarts": d["RestartCount"],
        }
        for d in details
    }
    return {
        "file": AWS_FILE,
        "minutes": minutes,
        "period_s": period,
        "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": runner.events,
        "audit_ok": bool(report["ok"]) and report["exit_code"] == 0,
        "audit": {k: report[k] for k in ("messages", "rows", "lost", "duplicate_rows", "lag")},
        "containers": states,
        **analysis,
        "flat_problems": flat_problems,
        "flat_explained": flat_explained,
        "samples": runner.samples,
        "pipeline": runner.pipeline,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Soak: the AWS file for {result['minutes']:g} minutes ({result['taken_at'][:10]})",
        "",
        f"`docker-compose -f {AWS_FILE} up -d` at the default rate (10 orders/s), sampled "
        f"every {result['period_s']:g} s. Audit at the end: "
        f"{'CONSISTENT' if result['audit_ok'] else 'INCONSISTENT'} ({result['audit']}). "
        f"Largest lag seen: {result['max_lag']}; final lag: {result['final_lag']}.",
        "",
        "Events:",
        "",
        *[
            f"- {e['t']:.0f} s: {e['event']}"
            + (
                f" ({', '.join(f'{k}={v}' for k, v in e.items() if k not in ('t', 'event'))})"
                if len(e) > 2
                else ""
            )
            for e in result["events"]
        ],
        "",
        "Each series: start and end (means of the first and last 3 samples), the slope per "
        "hour over the whole run, and over the steady part (from 1/3 of the run, after both "
        "events), which decides whether it is flat. `memory_mib` is the working set (what "
        "`docker stats` shows: usage less the inactive page cache); `anon_mib` is anonymous "
        "memory (heaps, stacks), `shmem_mib` shared memory (PostgreSQL's shared_buffers as "
        "they are first touched) and `file_cache_mib` the page cache of files (cgroup "
        "`memory.stat`: rss, shmem, cache less shmem). The working set and anonymous memory "
        "are both judged flat.",
        "",
        "| container | metric | start | end | min | max | slope/h | steady slope/h |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in result["series"].items():
        for metric in METRICS:
            data = entry.get(metric)
            if data:
                lines.append(
                    f"| {name} | {metric} | {data['start']} | {data['end']} | {data['min']} | "
                    f"{data['max']} | {data['slope_per_h']} | {data['steady_slope_per_h']} |"
                )
    lines += [
        "",
        "Containers at the end: "
        + ", ".join(
            f"{n} (restarts {s['restarts']}, OOM-killed {'yes' if s['oom_killed'] else 'no'})"
            for n, s in result["containers"].items()
        ),
        "",
    ]
    verdict = result["flat_problems"] or [
        "memory, descriptors and threads flat within noise"
        if not result.get("flat_explained")
        else "anonymous memory, descriptors and threads flat within noise; the working set "
        "flat too except where the data grows by design (judged apart, below)"
    ]
    if result["minutes"] < 30:
        verdict = ["(too short to judge flatness; the committed run is 60 minutes)"]
    lines += ["Flatness: " + "; ".join(verdict), ""]
    if result.get("flat_explained"):
        lines += [
            "Judged apart (the working set of a service whose data grows by design, with its "
            "anonymous memory flat): " + "; ".join(result["flat_explained"]),
            "",
        ]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True)
    names = sorted({s["container"] for s in result["samples"]})
    for ax, metric, label in zip(
        axes[:4],
        ("memory_mib", "anon_mib", "fds", "threads"),
        ("working set (MiB)", "anonymous (MiB)", "open fds", "threads"),
        strict=True,
    ):
        for name in names:
            pts = [(s["t"] / 60, s[metric]) for s in result["samples"] if s["container"] == name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name.split("_", 1)[-1])
        ax.set_ylabel(label)
    lag = [(p["t"] / 60, p["lag"]) for p in result["pipeline"] if p["lag"] is not None]
    axes[4].plot([p[0] for p in lag], [p[1] for p in lag], color="black")
    axes[4].set_ylabel("group lag (messages)")
    axes[4].set_xlabel("minutes")
    for ax in axes:
        for e in result["events"]:
            if e["event"].startswith(("consumer crashed", "scale")):
                ax.axvline(e["t"] / 60, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=7, loc="upper left", ncol=3)
    axes[0].set_title(
        f"foodpipe on the AWS file, {result['minutes']:g} minutes at 10 orders/s "
        "(dotted: consumer crash, scale to 2, scale to 1)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def problems(result: dict[str, Any]) -> list[str]:
    found = list(result["flat_problems"])
    if not result["audit_ok"]:
        found.append(f"audit not CONSISTENT: {result['audit']}")
    if result["final_lag"] not in (0, None) and result["final_lag"] > 50:
        found.append(f"lag {result['final_lag']} at the end")
    for name, state in result["containers"].items():
        if state["oom_killed"]:
            found.append(f"{name} OOM-killed")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--period", type=float, default=10, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    images = engine_and_images()
    with tempfile.TemporaryDirectory() as tmp:
        # Its own project prefix: a test run's clean-up removes only `fptest` projects.
        checkout = Checkout.create(Path(tmp), images, AWS_FILE, prefix="fpsoak")
        checkout.setup_env_file()
        try:
            result = soak(checkout, args.minutes, args.period)
        finally:
            checkout.down("-v")
    label = "1h" if args.minutes == 60 else f"{args.minutes:g}m"
    stem = args.out / f"{result['taken_at'][:10]}-soak-{label}"
    chart(result, stem.with_suffix(".png"))
    write_results(stem, result, markdown(result), "soak", problems(result))


if __name__ == "__main__":
    main()
