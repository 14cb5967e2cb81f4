"""The docs run: every command in README.md and docs/KeyPoints/*.md is executed or checked.

The convention for writing docs
===============================
- Commands go in fenced blocks tagged ``bash``, one command per line (a ``\\`` at the
  end of a line, or a heredoc, continues it). Every ``bash`` block is read by this test;
  there is no "not run" tag. ``sh``, ``shell`` and ``console`` blocks are refused, so a
  command cannot hide from the test.
- A ``text`` block right after a ``bash`` block (prose in between is fine, a heading is
  not) shows the output of that block's last command that runs (a docker or CI command
  after it does not count). The test checks it: each non-blank line must appear in the
  output, in order, as part of one output line; runs of spaces compare equal, and
  ``...`` stands for text that differs between runs. Keep one command per block when
  you show its output. Output is stdout and stderr together, as on a terminal.
- A ``python`` block is a quote of the code: its lines must appear, in a row, in a file
  under ``src/``. Relative links and their ``#anchors`` must resolve.
- How each command is checked depends on what it is:

  ====================================  ==================================================
  command                               checked by
  ====================================  ==================================================
  ``... &`` (ends with ``&``)           started in the shell; it must not crash; SIGTERM
                                        at the end of the scenario if still running
  runs until stopped: a ``# ...         run in a pseudo-terminal, as in a terminal window;
  Ctrl-C ...`` comment, or one of       when the ``text`` block's output has appeared, a
  ``foodpipe consume``, ``foodpipe      real Ctrl-C (the ^C byte); exit 0 or 130. Such a
  produce`` without ``--count``,        command must be followed by a ``text`` block.
  ``foodpipe status --watch``,
  ``tail -f``, ``scripts/run_local.sh``
  (without ``--count``/``-d``/``stop``)
  ``foodpipe status|audit|health|``     re-run until the output matches and the exit
  ``dlq list|config``, ``grep``,        status is 0 (deadline 90 s): the pipeline needs
  ``tail``, ``cat``, ``curl``,          a moment to get there
  ``local_stack.sh status``,
  ``kafka-tool.sh console-consumer|``
  ``dump-log|get-offsets``
  anything else                         run once; exit status 0; output as shown
  ``docker`` / ``docker-compose``       statically: files, services, profiles and
                                        ``foodpipe`` sub-commands exist in the compose
                                        files (tests/docker runs the README's Docker
                                        Quick Start in a real engine)
  ``scripts/test.sh``                   it is CI's own command: ``.ci/run`` runs it
  ``pytest ...``                        collected with ``--collect-only`` (the full run is
                                        CI itself); the selection must not be empty
  ``scripts/local_stack.sh stop``       not run (it would stop the services of the whole
                                        test session; the ``stack`` fixture runs it),
                                        unless the shell's ``STACK_DIR`` names a stack
                                        the scenario started itself; such a stack is
                                        also stopped when the scenario fails
  ====================================  ==================================================

  To show a command's exit status, write ``command; echo "exit code $?"`` and put
  ``exit code N`` in the ``text`` block.
- Scenarios: a heading that starts with "Try it" begins an experiment that runs until
  the next "Try it" heading; everything before the first one is the page's own scenario
  (the README runs top to bottom as one). Each scenario runs in a fresh ``bash``, like
  a new terminal, in a fresh directory that looks like the repository root (symlinks;
  the commands' ``.env`` and log files land there), against its own topic, DLQ topic,
  consumer group and database from ``make_pipeline``. The environment variables
  override what the commands write into ``.env``; output is compared after mapping
  those private names back to ``food-orders``, ``food-orders.dlq``,
  ``order-processors`` and ``foodpipe``. ``LOG_FORMAT`` is left at ``auto``, as for a
  reader: JSON when the output is not a terminal.
- A scenario that stops, freezes or kills a broker or PostgreSQL is marked ``fault``;
  whatever it leaves stopped is started again afterwards. A scenario that drives
  ``scripts/local_stack.sh`` or reads ``.stack/`` is skipped when the services come
  from elsewhere (``STACK_DIR``, ``KAFKA_PORT`` and ``PG_PORT`` are passed on to the
  docs' commands). When the stack runs on other ports than the documented defaults
  (19092, 15432), the commands are typed with the stack's ports and their output is
  compared with the default ports put back. Likewise a command that names
  ``food-orders``, ``food-orders.dlq`` or ``order-processors`` (Kafka's own tools take
  ``--topic`` and ``--group``) is typed with the scenario's private names.
- ``FOODPIPE_DOCS_TRANSCRIPT=FILE`` appends every command and its real output to FILE:
  the way to see what to put in a ``text`` block.

Run it: ``.venv/bin/pytest tests/integration/test_docs.py`` (``-k README``, ``-k
"consumer and poison"``, ``-m "not fault"``). The summary line of a passing run is
``N passed``; each scenario
has its own id, e.g. ``test_scenario[docs/KeyPoints/consumer.md::Try it: ...]``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from foodpipe.cli import COMMANDS

from ..conftest import Pipeline, Stack
from ..docsexec import (
    FORBIDDEN_LANGS,
    Command,
    Kind,
    Runner,
    Scenario,
    ShellError,
    ShellSession,
    all_scenarios,
    blocks,
    doc_pages,
    shadow_checkout,
)
from ..support import REPO, subprocess_env

SCENARIOS = all_scenarios()


def _commands(kind: Kind) -> list[Command]:
    return [c for s in SCENARIOS for c in s.commands if c.kind is kind]


def _param(scenario: Scenario) -> Any:
    marks = [pytest.mark.slow]
    if scenario.is_fault:
        marks.append(pytest.mark.fault)
    return pytest.param(scenario, id=scenario.id, marks=marks)


def session_env(pipeline: Pipeline, workdir: Path) -> dict[str, str]:
    """A reader's environment: no virtualenv on PATH (the docs activate it), the
    pipeline's private names, and the default log format (JSON when not a terminal)."""
    env = subprocess_env(pipeline.env)
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.pop("LOG_FORMAT", None)
    env.pop("VIRTUAL_ENV", None)
    # The private names are longer than the documented ones: a wide "terminal" keeps
    # rich's tables from wrapping lines that would fit with the documented names.
    env["COLUMNS"] = "160"
    # Where the session's local stack is, when it is not the default one: the docs'
    # `scripts/local_stack.sh` commands must act on the stack the fixtures started.
    for name in STACK_IDENTITY:
        if name in os.environ:
            env[name] = os.environ[name]
    # Order-id counters of this run only; the docs' default is .stack/producer-state.
    env["PRODUCER_STATE_DIR"] = str(workdir / "producer-state")
    # The owner URL of the scenario's database, as a reader's .env has the stack's
    # (`scripts/local_stack.sh env`): the docs empty the orders table with it.
    env["DATABASE_ADMIN_URL"] = pipeline.db_admin_url
    return env


#: Environment variables of scripts/local_stack.sh that say which stack it controls.
STACK_IDENTITY = ("STACK_DIR", "KAFKA_PORT", "PG_PORT", "KAFKA_NODES", "FOODPIPE_CACHE_DIR")
DEFAULT_PORTS = {"KAFKA_PORT": "19092", "PG_PORT": "15432"}


def port_rewrites(environ: Mapping[str, str]) -> dict[str, str]:
    """``{":19092": ":39092", ...}`` when the stack runs on other ports than the documented
    defaults: the docs' commands are typed with this stack's ports, and its output is
    read back with the documented ones. Kafka node N listens on KAFKA_PORT + 10 (N - 1),
    its controller on the port after it. The replication page starts a second, 3-node
    stack 100 ports up (Kafka 19192, PostgreSQL 15442): it moves along. A port is
    rewritten after ``:`` (an address) or ``=`` (``KAFKA_PORT=19192``)."""
    moved: dict[int, int] = {}
    kafka = int(environ.get("KAFKA_PORT", DEFAULT_PORTS["KAFKA_PORT"]))
    default_kafka = int(DEFAULT_PORTS["KAFKA_PORT"])
    if kafka != default_kafka:
        for stack in (0, 100):
            for offset in (0, 1, 10, 11, 20, 21):
                moved[default_kafka + stack + offset] = kafka + stack + offset
    pg = int(environ.get("PG_PORT", DEFAULT_PORTS["PG_PORT"]))
    default_pg = int(DEFAULT_PORTS["PG_PORT"])
    if pg != default_pg:
        for stack in (0, 10):
            moved[default_pg + stack] = pg + stack
    return {f"{sep}{old}": f"{sep}{new}" for old, new in moved.items() for sep in ":="}


def typed_names(names: Mapping[str, str]) -> dict[str, str]:
    """The documented topic and group names -> this scenario's private ones, for commands
    that name them (Kafka's own tools take ``--topic food-orders``, not a setting). The
    database name is left alone: "foodpipe" is also the command."""
    return {doc: private for private, doc in names.items() if doc != "foodpipe"}


def private_names(pipeline: Pipeline) -> dict[str, str]:
    database = pipeline.settings.sqlalchemy_url().database or ""
    return {
        pipeline.dlq_topic: "food-orders.dlq",
        pipeline.topic: "food-orders",
        pipeline.group: "order-processors",
        database: "foodpipe",
    }


@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
def test_scenario(
    scenario: Scenario,
    stack: Stack,
    make_pipeline: Callable[..., Pipeline],
    tmp_path: Path,
) -> None:
    if not scenario.runnable():
        pytest.skip("no command of this scenario runs here (only static checks)")
    if scenario.uses_local_stack and stack.source != "local":
        pytest.skip(f"the docs drive scripts/local_stack.sh; services come from {stack.source}")
    typed_ports = port_rewrites(os.environ)
    # Private names about as long as the documented ones, so that tables wrap where
    # the reader's do.
    tag = uuid.uuid4().hex[:8]
    pipeline = make_pipeline(
        kafka_topic=f"docs-{tag}",
        kafka_dlq_topic=f"docs-{tag}.dlq",
        kafka_consumer_group=f"docs-{tag}-group",
    )
    stack_dir = Path(os.environ["STACK_DIR"]) if "STACK_DIR" in os.environ else None
    workdir = shadow_checkout(tmp_path / "checkout", stack_dir=stack_dir)
    logs = tmp_path / "jobs"
    logs.mkdir()
    names = private_names(pipeline)
    rewrites = {**typed_names(names), **typed_ports}
    names.update({v: k for k, v in typed_ports.items()})
    session = ShellSession(workdir, session_env(pipeline, workdir))
    runner = Runner(session, names, logs, rewrites=rewrites, session_stack=session_stack())
    try:
        runner.run(scenario)
    except ShellError as exc:
        # A command that hangs prints nothing; the background jobs' logs say why.
        raise ShellError(f"{exc}{log_tails(workdir)}") from None
    finally:
        with contextlib.suppress(Exception):  # the shell may be stuck in a failed command
            stop_foreign_stack(runner)
        session.close()
        if scenario.is_fault:
            restore_stack(stack)


def log_tails(workdir: Path, lines: int = 15, files: int = 6) -> str:
    """The last lines of the newest ``*.log`` files the scenario wrote, for a failure."""
    logs = sorted(workdir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    parts = []
    for log in logs[:files]:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(
            f"\n--- {log.name} (last {len(tail)} lines)\n" + "\n".join(t[:400] for t in tail)
        )
    return "".join(parts)


def session_stack() -> Path:
    """The folder of the session's own stack (which the docs must never stop)."""
    return Path(os.environ.get("STACK_DIR", REPO / ".stack"))


def stop_foreign_stack(runner: Runner) -> None:
    """A stack the scenario started itself (``export STACK_DIR=...``) and left running,
    because it failed before its own ``scripts/local_stack.sh stop``: stop it, and
    remove its data when it lives inside the session's stack folder, so that the next
    run starts afresh."""
    folder = runner.foreign_stack()
    if folder is None or not folder.exists():
        return
    cwd, env = runner.session.environment()
    subprocess.run(
        [str(REPO / "scripts" / "local_stack.sh"), "stop"],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )
    inside = session_stack().resolve()
    if folder.is_relative_to(inside) and folder != inside and folder.name != "cache":
        shutil.rmtree(folder, ignore_errors=True)


def restore_stack(stack: Stack) -> None:
    """Start again whatever a fault experiment stopped and did not restart (because it
    failed half way): the rest of the session needs the services. ``start`` is
    idempotent, but a frozen broker looks alive to it, so thaw that first."""
    with contextlib.suppress(RuntimeError):  # the broker is not frozen but gone
        stack.script("kafka-cont", "1")
    stack.script("start")


# ---------------------------------------------------------------- static checks


def test_docs_use_only_checked_blocks() -> None:
    problems = []
    for page in doc_pages():
        rel = page.relative_to(REPO)
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.lang in FORBIDDEN_LANGS:
                problems.append(f"{rel}:{block.line}: a '{block.lang}' block; use 'bash'")
    assert not problems, "\n".join(problems)


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_quoted_code_matches_the_source() -> None:
    """A ```python block is a quote: its lines must appear, in a row, in a file under src/.
    When the code changes, the docs' quote fails here instead of silently going stale."""
    sources = {
        path.relative_to(REPO): _stripped_lines(path.read_text(encoding="utf-8"))
        for path in (REPO / "src").rglob("*.py")
    }
    stale = []
    for page in doc_pages():
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.lang != "python":
                continue
            quote = _stripped_lines(block.body)
            found = any(
                lines[i : i + len(quote)] == quote
                for lines in sources.values()
                for i in range(len(lines) - len(quote) + 1)
            )
            if not found:
                stale.append(f"{page.relative_to(REPO)}:{block.line}")
    assert not stale, f"```python blocks that no longer match the code in src/: {stale}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_links_resolve() -> None:
    """Every relative link of the docs points at a file that exists, and every #anchor
    at a heading of the page it names."""
    broken = []
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue
            path_part, _, anchor = target.partition("#")
            path = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(REPO)} -> {target}"
            if not path.exists():
                broken.append(f"{where}: no such file")
                continue
            if anchor and path.suffix == ".md":
                headings = re.findall(r"^#{1,6}\s+(.*?)\s*$", path.read_text(), re.MULTILINE)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def test_every_long_running_command_shows_its_output() -> None:
    missing = [c.where for c in _commands(Kind.LONG) if c.expect is None]
    assert not missing, f"Ctrl-C commands need a ```text block after them: {missing}"


def test_every_keypoints_page_has_experiments() -> None:
    for page in (REPO / "docs" / "KeyPoints").glob("*.md"):
        if page.name == "README.md":
            continue
        titles = [s.title for s in all_scenarios() if s.page.endswith(page.name)]
        assert any(t.lower().startswith("try it") for t in titles), f"{page.name}: no Try it"


def test_ci_entry_point_is_what_ci_runs() -> None:
    commands = _commands(Kind.CI_ENTRY)
    ci = (REPO / ".ci" / "run").read_text()
    for command in commands:
        assert command.words[0] in ("scripts/test.sh", ".ci/run", "bash"), command.where
        if command.words[0] == "scripts/test.sh":
            assert "scripts/test.sh" in ci, f"{command.where}: .ci/run does not run it"


def test_stack_stop_is_what_the_fixture_runs() -> None:
    script = (REPO / "scripts" / "local_stack.sh").read_text()
    conftest = (REPO / "tests" / "conftest.py").read_text()
    for command in _commands(Kind.STACK_STOP):
        assert re.search(r"^\s*stop\)", script, re.MULTILINE), command.where
        assert '"stop"]' in conftest, "the stack fixture no longer stops the stack"


@pytest.mark.parametrize("command", _commands(Kind.PYTEST), ids=lambda c: c.code)
def test_pytest_selection_is_valid(command: Command) -> None:
    words = command.words
    at = next(i for i, w in enumerate(words) if w.endswith("pytest"))
    args = words[at + 1 :]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *args,
            "--collect-only",
            "-q",
            "--no-cov",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command.where}: {result.stdout[-2000:]}{result.stderr}"
    collected = re.search(r"(\d+) tests? collected", result.stdout)
    assert collected, f"{command.where}: no 'N tests collected' line:\n{result.stdout[-2000:]}"
    assert int(collected.group(1)) > 0, f"{command.where}: selects no test"


COMPOSE_SUBCOMMANDS = frozenset(
    {"up", "down", "logs", "ps", "exec", "run", "stop", "start", "restart", "build", "pull"}
    | {"config", "top", "stats"}
)


def _compose_file(name: str) -> dict[str, Any]:
    path = REPO / name
    assert path.is_file(), f"{name} does not exist"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), name
    assert isinstance(data.get("services"), dict), f"{name} has no services"
    return data


def check_docker_command(command: Command) -> None:
    """What can be known without an engine: the files, services, profiles and the
    ``foodpipe`` sub-command exist; options are ones Compose has."""
    words = command.words
    if words[0] == "docker-compose":
        words = ["docker", "compose", *words[1:]]
    assert words[1:2] == ["compose"], f"{command.where}: only `docker compose` is documented"
    args = words[2:]
    files: list[str] = []
    profiles: list[str] = []
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option in ("-f", "--file"):
            files.append(args.pop(0))
        elif option == "--profile":
            profiles.append(args.pop(0))
        else:
            raise AssertionError(f"{command.where}: unexpected compose option {option}")
    compose = [_compose_file(f) for f in files or ["docker-compose.yml"]]
    services: dict[str, Any] = {}
    for data in compose:
        services.update(data["services"])
    known_profiles = {p for s in services.values() for p in (s.get("profiles") or [])}
    for profile in profiles:
        assert profile in known_profiles, f"{command.where}: no service has profile {profile}"
    assert args, f"{command.where}: no compose sub-command"
    sub, rest = args[0], args[1:]
    assert sub in COMPOSE_SUBCOMMANDS, f"{command.where}: unknown compose sub-command {sub}"
    positional: list[str] = []
    while rest:
        word = rest.pop(0)
        if word == "--scale":
            name = rest.pop(0).split("=")[0]
            assert name in services, f"{command.where}: --scale of unknown service {name}"
        elif word.startswith("--scale="):
            name = word.split("=")[1]
            assert name in services, f"{command.where}: --scale of unknown service {name}"
        elif word.startswith("-"):
            if word in ("--tail", "-n", "--since", "-t", "--timeout", "-u", "--user"):
                rest.pop(0)
        else:
            positional.append(word)
            if sub in ("exec", "run"):
                positional.extend(rest)
                break
    if sub in ("exec", "run"):
        assert positional, f"{command.where}: no service named"
        assert positional[0] in services, f"{command.where}: unknown service {positional[0]}"
        if positional[1:2] == ["foodpipe"]:
            inner = [w for w in positional[2:] if not w.startswith("-")]
            assert inner, f"{command.where}: foodpipe without a sub-command"
            assert inner[0] in COMMANDS, f"{command.where}: no foodpipe sub-command {inner[0]}"
    else:
        for name in positional:
            assert name in services, f"{command.where}: no service '{name}' in {files}"


@pytest.mark.parametrize("page", sorted({c.page for c in _commands(Kind.DOCKER)}) or ["(none)"])
def test_docker_commands(page: str) -> None:
    """Checked statically here; tests/docker runs the Quick Start's commands for real."""
    commands = [c for c in _commands(Kind.DOCKER) if c.page == page]
    for command in commands:
        check_docker_command(command)


def test_docs_commands_parse_as_shell() -> None:
    """``bash -n``: every command is valid shell syntax."""
    for scenario in SCENARIOS:
        for command in scenario.commands:
            result = subprocess.run(
                ["bash", "-n"], input=command.text, capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{command.where}: {result.stderr}"
