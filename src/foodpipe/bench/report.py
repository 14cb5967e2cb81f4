"""The bench's results: one JSON document, a Markdown table and a PNG chart.

:func:`build_document` turns the per-run values into summaries (median, min, max,
spread), computes every ratio within each run before summarising it, and checks the
targets. The Markdown and the chart are rendered from that document alone, so they can
be regenerated from a committed JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foodpipe.bench.metrics import METRICS, RATIOS, RSS_LIMIT_MIB, TARGETS, Target
from foodpipe.bench.runner import RunRecord
from foodpipe.bench.stats import summarize

SCHEMA_VERSION = 1


class ChartUnavailable(Exception):
    """matplotlib is not installed; ``str()`` is one line with the fix."""


def require_matplotlib() -> None:
    """Fail before a long bench, not after it, when the chart cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChartUnavailable(
            "matplotlib is not installed, so the chart cannot be drawn; install it with"
            " `pip install -r requirements-dev.txt` or run the bench with --no-chart"
        ) from None


def build_document(
    *,
    date: str,
    started_at: str,
    finished_at: str,
    command: str,
    conditions: dict[str, Any],
    runs: Sequence[RunRecord],
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, info in METRICS.items():
        values = [run.values[name] for run in runs if name in run.values]
        if not values:
            continue
        metrics[name] = {
            "label": info.label,
            "unit": info.unit,
            "group": info.group,
            "higher_is_better": info.higher_is_better,
            **summarize(values).to_dict(),
        }
    ratios: dict[str, Any] = {}
    for name, ratio in RATIOS.items():
        values = [
            run.values[ratio.numerator] / run.values[ratio.denominator]
            for run in runs
            if run.values.get(ratio.denominator) and ratio.numerator in run.values
        ]
        if values:
            ratios[name] = {
                "label": ratio.label,
                "numerator": ratio.numerator,
                "denominator": ratio.denominator,
                **summarize(values).to_dict(),
            }
    disturbed = [run.index for run in runs if run.disturbed]
    return {
        "schema_version": SCHEMA_VERSION,
        "date": date,
        "started_at": started_at,
        "finished_at": finished_at,
        "command": command,
        "conditions": conditions,
        "runs": [run.to_dict() for run in runs],
        "metrics": metrics,
        "ratios": ratios,
        "targets": [_check(target, metrics, ratios) for target in TARGETS],
        "disturbed_runs": disturbed,
    }


def _check(target: Target, metrics: dict[str, Any], ratios: dict[str, Any]) -> dict[str, Any]:
    entry = metrics.get(target.metric) or ratios.get(target.metric)
    value: float | None = None
    if entry is not None:
        if target.basis == "median":
            value = entry["median"]
        elif target.absolute:
            value = max(abs(v) for v in entry["runs"])
        else:
            # The worst run: the lowest where higher is better, else the highest.
            value = entry["min"] if target.op == ">=" else entry["max"]
    return {
        "description": target.description,
        "metric": target.metric,
        "op": target.op,
        "threshold": target.threshold,
        "basis": target.basis,
        "required": target.required,
        "value": value,
        "met": None if value is None else target.met(value),
    }


# ---------------------------------------------------------------------------- files


def write_results(document: dict[str, Any], out_dir: Path, chart: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = document["date"]
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    if chart:
        paths["chart"] = out_dir / f"{stem}.png"
    paths["json"].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(document, paths.get("chart")), encoding="utf-8")
    if chart:
        render_chart(document, paths["chart"])
    return paths


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    magnitude = abs(value)
    if unit == "%":
        text = f"{value:+.2f}"
    elif magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text


def _spread(entry: dict[str, Any], unit: str) -> str:
    if unit == "%":
        return f"{entry['max'] - entry['min']:.2f} pp"
    return f"{entry['spread_pct']:.1f}%"


def _peer_line(peer: dict[str, Any] | None) -> str:
    """One line on the JDBC-sink peer row: what it ran, or why it is missing."""
    if peer is None:
        return "JDBC-sink peer: not part of this result."
    if peer["status"] != "measured":
        return f"JDBC-sink peer: not measured, {peer['status']}."
    settings = ", ".join(f"{k}={v}" for k, v in peer["settings"].items())
    return (
        f"JDBC-sink peer: Kafka Connect {peer['kafka_connect']} standalone with the Debezium"
        f" JDBC sink {peer['debezium_connector_jdbc']} ({settings}), draining a copy of the"
        " same orders as JSON with schema into its own table of the same shape."
    )


def render_markdown(document: dict[str, Any], chart: Path | None = None) -> str:
    c = document["conditions"]
    v = c["versions"]
    b = c["bench"]
    lines = [
        f"# foodpipe bench, {document['date']}",
        "",
        f"Command: `{document['command']}`",
        "",
        f"{c['cpu_count']} CPUs ({c['cpu_model']}), {c['mem_total_mib']:,} MiB RAM, {c['os']}."
        f" Python {v['python']}, confluent-kafka {v['confluent_kafka']} (librdkafka"
        f" {v['librdkafka']}), Kafka {v['kafka']} (Java {v['java']}), PostgreSQL"
        f" {v['postgres']} (synchronous_commit={c['postgres_settings']['synchronous_commit']}).",
        f"{b['orders']:,} orders of {b['mean_order_bytes']:.0f} B mean, {b['runs']} run(s);"
        f" DB-NAIVE over {b['naive_rows']:,} rows; DB-BATCH pages of {b['db_batch_page_rows']}"
        f" rows; consumer BATCH_SIZE={c['consumer']['batch_size']},"
        f" BATCH_TIMEOUT_MS={c['consumer']['batch_timeout_ms']}"
        + (
            f", BATCH_LINGER_MS={c['consumer']['batch_linger_ms']}"
            if "batch_linger_ms" in c["consumer"]
            else ""
        )
        + "; producer"
        f" linger.ms={c['producer'].get('linger.ms')},"
        f" compression={c['producer'].get('compression.type')}, acks={c['producer'].get('acks')};"
        f" rate windows of {b['rate_window_s']:g} s after {b['rate_warmup_s']:g} s of warm-up.",
        "",
        _peer_line(c.get("peer")),
        "",
        "Figures are the median of the runs; spread is (max - min) / median, or for figures"
        " that are themselves percentages (max - min) in percentage points (pp), since"
        " their median can be near 0. Ratios are taken within each run, then summarised.",
        "",
        "| measurement | median | min | max | spread | unit |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for entry in document["metrics"].values():
        unit = entry["unit"]
        lines.append(
            f"| {entry['label']} | {_fmt(entry['median'], unit)} | {_fmt(entry['min'], unit)}"
            f" | {_fmt(entry['max'], unit)} | {_spread(entry, unit)} | {unit} |"
        )
    lines += [
        "",
        "| ratio (same run) | median | min | max | spread |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for entry in document["ratios"].values():
        lines.append(
            f"| {entry['label']} | {entry['median']:.3g} | {entry['min']:.3g}"
            f" | {entry['max']:.3g} | {entry['spread_pct']:.1f}% |"
        )
    lines += ["", "| target | value | basis | result |", "| --- | ---: | --- | --- |"]
    for target in document["targets"]:
        if target["met"] is None:
            result = "not measured"
        elif target["met"]:
            result = "met" if target["required"] else "reached (aim)"
        else:
            result = "MISSED" if target["required"] else "not reached (aim)"
        lines.append(
            f"| {target['description']} | {_fmt(target['value'])} | {target['basis']} | {result} |"
        )
    lines += [
        "",
        "| run | started (UTC) | seconds | CPU busy before | CPU busy during | disturbed |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for run in document["runs"]:
        lines.append(
            f"| {run['index']} | {run['started_at']} | {run['seconds']:.0f}"
            f" | {run['cpu_busy_before_pct']:.0f}% | {run['cpu_busy_during_pct']:.0f}%"
            f" | {'yes' if run['disturbed'] else 'no'} |"
        )
    if chart is not None:
        lines += ["", f"![foodpipe bench {document['date']}]({chart.name})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- chart

_THROUGHPUT = (
    "db_copy",
    "db_batch",
    "db_naive",
    "kafka_produce",
    "kafka_consume",
    "producer_max",
    "drain_1",
    "drain_2",
    "drain_3",
    "peer_jdbc",
)
_SHORT = {
    "db_copy": "DB-COPY",
    "db_batch": "DB-BATCH",
    "db_naive": "DB-NAIVE",
    "kafka_produce": "KAFKA-PRODUCE",
    "kafka_consume": "KAFKA-CONSUME",
    "producer_max": "producer (max)",
    "drain_1": "drain, 1 consumer",
    "drain_2": "drain, 2 consumers",
    "drain_3": "drain, 3 consumers",
    "peer_jdbc": "JDBC-sink peer",
}
_COLOURS = {"ceiling": "#9e9e9e", "peer": "#ff7f0e"}


def render_chart(document: dict[str, Any], path: Path) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = document["metrics"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), gridspec_kw={"width_ratios": [1.4, 1]})
    fig.suptitle(
        f"foodpipe bench {document['date']}: {document['conditions']['bench']['orders']:,}"
        f" orders, {document['conditions']['cpu_count']} CPUs,"
        f" median of {document['conditions']['bench']['runs']} run(s), whiskers min-max",
        fontsize=12,
    )

    # Throughput: ceilings (grey) against the pipeline (blue), log scale.
    ax = axes[0][0]
    names = [n for n in _THROUGHPUT if n in metrics][::-1]
    medians = [metrics[n]["median"] for n in names]
    errors = [
        [metrics[n]["median"] - metrics[n]["min"] for n in names],
        [metrics[n]["max"] - metrics[n]["median"] for n in names],
    ]
    colours = [_COLOURS.get(METRICS[n].group, "#1f77b4") for n in names]
    ax.barh([_SHORT[n] for n in names], medians, xerr=errors, color=colours, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("messages or rows per second (log scale)")
    ax.set_title("Throughput: ceilings (grey), pipeline (blue), JDBC-sink peer (orange)")
    for y, name in enumerate(names):
        # Right of the whisker, so the label never sits on it.
        ax.text(
            metrics[name]["max"] * 1.2,
            y,
            f"{metrics[name]['median']:,.0f}",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(right=max(medians) * 8 if medians else 10)
    ax.grid(axis="x", which="both", alpha=0.3)

    # Latency at 1000/s against the 100 ms target.
    ax = axes[0][1]
    pct = [p for p in ("p50", "p95", "p99") if f"e2e_1000_{p}" in metrics]
    values = [metrics[f"e2e_1000_{p}"]["median"] for p in pct]
    ax.bar(pct, values, color="#1f77b4")
    ax.axhline(100, color="#d62728", linestyle="--", label="target p99 <= 100 ms")
    for x, value in enumerate(values):
        ax.text(x, value, f"{value:.0f} ms", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("processed_at - created_at (ms)")
    ax.set_title("End-to-end latency at 1,000 orders/s")
    ax.legend(loc="upper left", fontsize=8)

    # Peak RSS of every Python service process, against the container limit.
    ax = axes[1][0]
    rss = [n for n in METRICS if n.startswith("rss_") and n in metrics][::-1]
    worst = [metrics[n]["max"] for n in rss]
    ax.barh([METRICS[n].label.removeprefix("RSS ") for n in rss], worst, color="#2ca02c")
    ax.axvline(RSS_LIMIT_MIB, color="#d62728", linestyle="--", label="container limit 128 MiB")
    for y, value in enumerate(worst):
        ax.text(value + 1, y, f"{value:.0f}", va="center", fontsize=8)
    ax.set_xlabel("peak RSS, VmHWM (MiB), worst run")
    ax.set_title("Memory of each Python service")
    ax.set_xlim(0, max([RSS_LIMIT_MIB, *worst]) * 1.15)
    ax.legend(loc="lower right", fontsize=8)

    # Rate accuracy against the +-2% band.
    ax = axes[1][1]
    rates = [r for r in ("10", "1000") if f"rate_{r}_error" in metrics]
    for x, rate in enumerate(rates):
        runs = metrics[f"rate_{rate}_error"]["runs"]
        ax.scatter([x] * len(runs), runs, color="#1f77b4", zorder=3)
        ax.text(
            x + 0.08,
            metrics[f"rate_{rate}_error"]["median"],
            f"{metrics[f'rate_{rate}_error']['median']:+.2f}%",
            va="center",
            fontsize=9,
        )
    ax.axhspan(-2, 2, color="#2ca02c", alpha=0.12, label="target +-2%")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rates)), [f"--rate {r}" for r in rates])
    ax.set_xlim(-0.5, len(rates) - 0.5)
    errors_seen = [abs(v) for r in rates for v in metrics[f"rate_{r}_error"]["runs"]]
    limit = max([4.0, *errors_seen]) * 1.1
    ax.set_ylim(-limit, limit)
    ax.set_ylabel("achieved / requested - 1 (%)")
    ax.set_title("Producer rate accuracy (each dot a run)")
    ax.legend(loc="upper right", fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
