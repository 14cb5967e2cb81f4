"""The AWS file's real footprint: every container's memory and CPU under a realistic load.

``docker-compose -f docker-compose.aws.yml up -d`` with its real limits, then:

1. the default rate (10 orders/s) for ``steady_s`` seconds;
2. a backlog: the consumer stopped, 20,000 orders produced as fast as they go
   (``docker-compose run producer produce --count 20000 --rate 0``), the consumer
   started again and timed until the lag is 0.

A sampler reads each container's cgroup (v1) every 0.5 s: the kernel's high-water mark
(``memory.max_usage_in_bytes``, page cache included), the working set (what
``docker stats`` shows: usage minus inactive file cache) and CPU time. At the end every
container's restarts and OOM kills come from ``docker inspect``.

As a command, it writes the committed figures:

    .venv/bin/python -m tests.docker.footprint --steady 180 --out bench/results

The docker test (test_compose_aws.py) runs the same measurement with a shorter steady
phase and asserts the limits.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support import wait_until

from .harness import (
    MIB,
    Checkout,
    engine_and_images,
    inspect,
    memory_reading,
    run,
    running_containers,
    wait_healthy,
    write_results,
)

AWS_FILE = "docker-compose.aws.yml"
SERVICES = ("kafka", "postgres", "producer", "consumer")
ONE_SHOTS = ("db-init", "topics-init")
#: The t2.small budget for all containers together (2 GiB instance, OS and dockerd aside).
BUDGET_BYTES = int(1.6 * 1024**3)


@dataclass
class Peak:
    container: str
    service: str
    limit: int
    high_water: int = 0
    working_set: int = 0
    rss: int = 0
    cpu_first_ns: int = 0
    cpu_last_ns: int = 0
    cpu_peak_pct: float = 0.0
    seconds: float = 0.0
    _last: tuple[float, int] | None = field(default=None, repr=False)

    def add(self, now: float, reading: dict[str, int]) -> None:
        self.high_water = max(self.high_water, reading["high_water"])
        self.working_set = max(self.working_set, reading["working_set"])
        self.rss = max(self.rss, reading["rss"])
        if not self.cpu_first_ns:
            self.cpu_first_ns = reading["cpu_ns"]
        if self._last is not None:
            elapsed = now - self._last[0]
            if elapsed > 0.5:
                pct = (reading["cpu_ns"] - self._last[1]) / 1e9 / elapsed * 100
                self.cpu_peak_pct = max(self.cpu_peak_pct, pct)
                self.seconds += elapsed
        self.cpu_last_ns = reading["cpu_ns"]
        self._last = (now, reading["cpu_ns"])

    @property
    def cpu_avg_pct(self) -> float:
        return (
            (self.cpu_last_ns - self.cpu_first_ns) / 1e9 / self.seconds * 100
            if self.seconds
            else 0.0
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_last")
        data["cpu_avg_pct"] = round(self.cpu_avg_pct, 1)
        data["cpu_peak_pct"] = round(self.cpu_peak_pct, 1)
        data["cpu_seconds"] = round((self.cpu_last_ns - self.cpu_first_ns) / 1e9, 1)
        return data


class Sampler:
    """Samples every container of the project once a second, in a thread."""

    def __init__(self, checkout: Checkout) -> None:
        self.checkout = checkout
        self.peaks: dict[str, Peak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for cid, service, _name, _oneoff in running_containers(self.checkout.project):
                reading = memory_reading(cid)
                if reading is None:
                    continue
                if cid not in self.peaks:
                    try:
                        details = inspect(cid)
                    except AssertionError:
                        continue  # gone between ps and inspect: a one-shot that just exited
                    self.peaks[cid] = Peak(
                        details["Name"].lstrip("/"), service, details["HostConfig"]["Memory"]
                    )
                self.peaks[cid].add(time.monotonic(), reading)
            self._stop.wait(0.5)  # the sampling period, not a synchronisation


def measure(checkout: Checkout, *, steady_s: float, backlog: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "file": AWS_FILE,
        "steady_seconds": steady_s,
        "backlog_orders": backlog,
        "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {platform.machine()}, "
        f"{run(['nproc']).stdout.strip()} cores",
    }
    with Sampler(checkout) as sampler:
        started = time.monotonic()
        checkout.compose("up", "-d", timeout=900)
        wait_healthy(checkout, SERVICES, ONE_SHOTS, timeout=400)
        result["up_to_healthy_s"] = round(time.monotonic() - started, 1)

        steady_end = time.monotonic() + steady_s
        rows_start = checkout.rows()
        wait_until(lambda: time.monotonic() >= steady_end, timeout=steady_s + 5, interval=1)
        result["steady_rows"] = checkout.rows() - rows_start

        checkout.compose("stop", "consumer", timeout=120)
        t0 = time.monotonic()
        checkout.compose(
            "run",
            "--rm",
            "-T",
            "producer",
            "produce",
            "--count",
            str(backlog),
            "--rate",
            "0",
            timeout=900,
        )
        result["backlog_produce_s"] = round(time.monotonic() - t0, 1)
        lag = checkout.status()["lag"]
        result["backlog_lag"] = lag
        t0 = time.monotonic()
        checkout.compose("start", "consumer", timeout=120)
        wait_until(
            lambda: checkout.status().get("lag") == 0,
            timeout=900,
            interval=1,
            message="the backlog drained (lag 0)",
        )
        drain = time.monotonic() - t0
        result["drain_s"] = round(drain, 1)
        result["drain_orders_per_s"] = round(lag / drain, 0)

    report = checkout.audit(allow_lag=True)
    result["audit_ok"] = bool(report["ok"]) and report["exit_code"] == 0
    result["audit"] = {k: report[k] for k in ("messages", "rows", "lost", "duplicate_rows", "lag")}

    containers = []
    for cid, peak in sampler.peaks.items():
        try:
            details = inspect(cid)
        except AssertionError:
            details = {}  # removed: a `run --rm` one-off, whose exit code was checked
        state = details.get("State", {})
        entry = peak.as_dict()
        entry["restarts"] = details.get("RestartCount", 0)
        entry["oom_killed"] = bool(state.get("OOMKilled", False))
        entry["still_running"] = bool(state.get("Running", False))
        containers.append(entry)
    containers.sort(key=lambda c: (c["service"], c["container"]))
    result["containers"] = containers
    long_running = [c for c in containers if c["service"] in SERVICES]
    result["total_peak_working_set"] = sum(c["working_set"] for c in containers)
    result["total_peak_high_water"] = sum(c["high_water"] for c in containers)
    result["total_limits_long_running"] = sum(c["limit"] for c in long_running)
    result["budget"] = BUDGET_BYTES
    return result


def markdown(result: dict[str, Any]) -> str:
    def mib(value: int) -> str:
        return f"{value / MIB:.0f}"

    lines = [
        f"# AWS file footprint ({result['taken_at'][:10]})",
        "",
        f"`docker-compose -f {AWS_FILE} up -d` with its real limits, on {result['machine']}.",
        f"Load: the default rate (10 orders/s) for {result['steady_seconds']:.0f} s, then a "
        f"backlog of {result['backlog_orders']:,} orders (consumer stopped, produced at full "
        f"speed in {result['backlog_produce_s']} s) drained in {result['drain_s']} s "
        f"({result['drain_orders_per_s']:,.0f} orders/s). Up to healthy: "
        f"{result['up_to_healthy_s']} s. Audit: "
        f"{'CONSISTENT' if result['audit_ok'] else 'INCONSISTENT'} ({result['audit']}).",
        "",
        "Memory from each container's cgroup, sampled every 0.5 s: *high-water* is the "
        "kernel's peak (`memory.max_usage_in_bytes`, page cache included, so Kafka's log "
        "segments push it towards the limit, where the kernel drops cache instead of "
        "killing); *working set* is what `docker stats` shows (usage minus inactive file "
        "cache); *RSS* is anonymous memory plus mapped files.",
        "",
        "| container | limit MiB | high-water MiB | working set MiB | RSS MiB "
        "| CPU avg % | CPU peak % | restarts | OOM-killed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in result["containers"]:
        lines.append(
            f"| {c['container']} | {mib(c['limit'])} | {mib(c['high_water'])} | "
            f"{mib(c['working_set'])} | {mib(c['rss'])} | {c['cpu_avg_pct']} | "
            f"{c['cpu_peak_pct']} | {c['restarts']} | {'yes' if c['oom_killed'] else 'no'} |"
        )
    lines += [
        "",
        f"All containers together: peak working sets {mib(result['total_peak_working_set'])} MiB, "
        f"high-water marks {mib(result['total_peak_high_water'])} MiB (each a peak, so the sum "
        f"is an upper bound), against the t2.small budget of {mib(result['budget'])} MiB.",
        "",
    ]
    return "\n".join(lines)


def check(result: dict[str, Any]) -> list[str]:
    """What is wrong with a measurement; empty when the AWS file fits."""
    problems = []
    for c in result["containers"]:
        if c["oom_killed"]:
            problems.append(f"{c['container']} was OOM-killed")
        if c["restarts"]:
            problems.append(f"{c['container']} restarted {c['restarts']} time(s)")
        if c["working_set"] >= c["limit"]:
            problems.append(f"{c['container']} working set reached its limit")
    if result["total_peak_working_set"] > result["budget"]:
        problems.append("the containers together exceed the 1.6 GiB t2.small budget")
    if not result["audit_ok"]:
        problems.append(f"the audit is not CONSISTENT: {result['audit']}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady", type=float, default=180, help="seconds at the default rate")
    parser.add_argument("--backlog", type=int, default=20_000, help="orders in the backlog")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    images = engine_and_images()
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Checkout.create(Path(tmp), images, AWS_FILE)
        checkout.setup_env_file()
        try:
            result = measure(checkout, steady_s=args.steady, backlog=args.backlog)
        finally:
            checkout.down("-v")
    stem = args.out / f"{result['taken_at'][:10]}-aws-footprint"
    write_results(stem, result, markdown(result), "footprint", check(result))


if __name__ == "__main__":
    main()
