"""Read the commands out of the Markdown docs, and run them in a real shell.

``tests/integration/test_docs.py`` describes the convention and drives this module;
``tests/unit/test_docsexec.py`` tests the parsing and matching without any services.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import queue
import re
import shlex
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .support import REPO, wait_until

#: The pages whose commands must run. Deployment pages belong to the containers work
#: and are about machines the tests cannot create (an EC2 host).
DOC_PAGES = ("README.md", "docs/README.md", "docs/KeyPoints/*.md")

#: Fence languages that mean "commands". Only ``bash`` is allowed: a ``sh`` or
#: ``console`` block would be a command that no test reads.
COMMAND_LANGS = frozenset({"bash"})
FORBIDDEN_LANGS = frozenset({"sh", "shell", "console", "zsh", "shell-session"})
OUTPUT_LANG = "text"

#: First words of commands that only read, and so may be repeated until their output
#: shows what the docs promise (the pipeline needs a moment to get there).
READ_ONLY = (
    ("foodpipe", "status"),
    ("foodpipe", "audit"),
    ("foodpipe", "health"),
    ("foodpipe", "dlq", "list"),
    ("foodpipe", "config"),
    ("scripts/local_stack.sh", "status"),
    ("scripts/healthcheck.sh",),
    ("grep",),
    ("tail",),
    ("head",),
    ("cat",),
    ("wc",),
    ("curl",),  # the docs only GET
    # Kafka's own tools, where they only look (the console consumer without --group
    # joins no group and commits nothing).
    ("scripts/kafka-tool.sh", "console-consumer"),
    ("scripts/kafka-tool.sh", "dump-log"),
    ("scripts/kafka-tool.sh", "get-offsets"),
)

#: local_stack.sh sub-commands that disturb the shared services; a scenario that uses
#: them is a fault-injection scenario (pytest marker ``fault``).
STACK_FAULTS = frozenset(
    {"kafka-kill", "kafka-stop", "kafka-cont", "kafka-term", "kafka-start", "pg-stop", "pg-start"}
)


class Kind(Enum):
    RUN = "run"  # run it; exit status 0
    LONG = "long"  # runs until Ctrl-C: run until its output appears, then SIGINT
    BACKGROUND = "background"  # ends with '&': started, stopped at the end of the scenario
    DOCKER = "docker"  # needs a Docker engine: checked against the compose files
    CI_ENTRY = "ci-entry"  # scripts/test.sh: CI's own command (.ci/run runs it)
    PYTEST = "pytest"  # a test selection: collected (the run is CI itself)
    STACK_STOP = "stack-stop"  # the session's services: the stack fixture stops them; run
    # only when the shell's STACK_DIR names another stack (one the scenario started)


RUNNABLE = frozenset({Kind.RUN, Kind.LONG, Kind.BACKGROUND})

#: Commands that run until they are interrupted, even when their comment forgets to say
#: "Ctrl-C": run in the foreground, the test would otherwise wait for them forever.
RUNS_UNTIL_STOPPED = (
    ("foodpipe", "consume"),
    ("foodpipe", "status", "--watch"),
    ("tail", "-f"),
    ("tail", "-F"),
    ("scripts/run_local.sh",),
)


def runs_until_stopped(words: list[str]) -> bool:
    if words[:2] == ["foodpipe", "produce"]:
        return "--count" not in words
    if words[:1] == ["scripts/run_local.sh"]:
        return not ({"--count", "-d", "--detach", "stop", "-h", "--help"} & set(words))
    if words[:2] == ["foodpipe", "status"]:
        return "--watch" in words
    return any(tuple(words[: len(prefix)]) == prefix for prefix in RUNS_UNTIL_STOPPED)


@dataclass
class Command:
    text: str  # what is sent to bash (comments included; bash ignores them)
    code: str  # the command without its trailing comment
    comment: str
    kind: Kind
    page: str
    line: int
    expect: str | None = None  # the ```text block shown after it

    @property
    def words(self) -> list[str]:
        return command_words(self.code)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def read_only(self) -> bool:
        words = self.words
        if words[:1] == ["scripts/kafka-tool.sh"] and words[1:2] in (
            ["topics"],
            ["consumer-groups"],
        ):
            # Describing and listing only look; --reset-offsets, --create, --alter, ... act.
            acts = {"--execute", "--create", "--alter", "--delete", "--reset-offsets"}
            return bool({"--describe", "--list"} & set(words)) and not acts & set(words)
        return any(tuple(words[: len(prefix)]) == prefix for prefix in READ_ONLY)


@dataclass
class Scenario:
    """Commands a reader runs in one terminal session, top to bottom."""

    page: str
    title: str
    commands: list[Command] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}::{self.title}"

    @property
    def uses_local_stack(self) -> bool:
        return any(
            c.words[:1] == ["scripts/local_stack.sh"] or ".stack/" in c.code for c in self.commands
        )

    @property
    def is_fault(self) -> bool:
        return any(
            c.words[:1] == ["scripts/local_stack.sh"]
            and c.words[1:2]
            and c.words[1] in STACK_FAULTS
            for c in self.commands
        )

    def runnable(self) -> list[Command]:
        return [c for c in self.commands if c.kind in RUNNABLE]


@dataclass
class Block:
    lang: str
    body: str
    line: int  # line of the first body line (1-based)
    heading: str
    follows_command: bool  # a ```text block right after a ```bash block (prose between)


# ---------------------------------------------------------------------- parsing

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<info>[^`]*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_pages(root: Path = REPO) -> list[Path]:
    pages: list[Path] = []
    for pattern in DOC_PAGES:
        pages.extend(sorted(root.glob(pattern)))
    return pages


def blocks(text: str) -> Iterator[Block]:
    """Every fenced block, with the heading it sits under."""
    lines = text.splitlines()
    heading = ""
    last_was_command = False
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _FENCE.match(line)
        if not match:
            head = _HEADING.match(line)
            if head:
                heading = head.group(2)
                last_was_command = False
            i += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        lang = match.group("info").strip().split(" ")[0].lower()
        body: list[str] = []
        start = i + 2
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and lines[i].strip().strip("`") == ""
        ):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        yield Block(lang, "\n".join(body), start, heading, lang == OUTPUT_LANG and last_was_command)
        if lang in COMMAND_LANGS:
            last_was_command = True
        elif lang != OUTPUT_LANG:
            last_was_command = False
        else:
            last_was_command = False


def split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)``: the first ``#`` outside quotes that starts a word."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
            continue
        if char == "\\" and quote != "'":
            escaped = True
            continue
        if quote:
            if char == quote:
                quote = ""
            continue
        if char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def commands_of(body: str, page: str, first_line: int) -> list[Command]:
    """Split a bash block into commands: one per line, joined across ``\\`` and heredocs."""
    lines = body.splitlines()
    result: list[Command] = []
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        while parts[-1].endswith("\\") and i < len(lines):
            parts.append(lines[i])
            i += 1
        heredoc = _HEREDOC.search(parts[0])
        if heredoc:
            strip_tabs, delimiter = heredoc.group(1) == "-", heredoc.group(3)
            while i < len(lines):
                parts.append(lines[i])
                i += 1
                end = lines[i - 1].lstrip("\t") if strip_tabs else lines[i - 1]
                if end == delimiter:
                    break
        code, comment = split_comment(parts[0])
        code_text = "\n".join([code, *parts[1:]])
        result.append(
            Command(
                text="\n".join(parts),
                code=code_text,
                comment=comment,
                kind=classify(code_text, comment),
                page=page,
                line=first_line + start,
            )
        )
    return result


def command_words(code: str) -> list[str]:
    """The words of a command's first line, without leading ``VAR=value`` assignments."""
    first = code.replace("\\\n", " ").splitlines()[0].strip()
    try:
        words = shlex.split(first)
    except ValueError:
        words = first.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    return words


def classify(code: str, comment: str) -> Kind:
    words = command_words(code)
    first = words[0] if words else ""
    if first in ("docker", "docker-compose"):
        return Kind.DOCKER
    if first in ("scripts/test.sh", ".ci/run") or words[:2] == ["bash", ".ci/run"]:
        return Kind.CI_ENTRY
    if first.endswith("pytest") or words[:3] == ["python", "-m", "pytest"]:
        return Kind.PYTEST
    if words[:2] == ["scripts/local_stack.sh", "stop"]:
        return Kind.STACK_STOP
    stripped = code.rstrip()
    if stripped.endswith("&") and not stripped.endswith("&&"):
        return Kind.BACKGROUND
    if "ctrl-c" in comment.lower() or ("\n" not in code and runs_until_stopped(words)):
        return Kind.LONG
    return Kind.RUN


def scenarios(page: Path, root: Path = REPO) -> list[Scenario]:
    """A page's scenarios: the page itself, and one per heading that starts with "Try it".

    A "Try it" scenario runs from its heading to the next "Try it" heading; everything
    before the first one is the page's own scenario (the README is one scenario, read
    top to bottom).
    """
    rel = page.relative_to(root).as_posix()
    current = Scenario(rel, "page")
    found = [current]
    pending: Command | None = None
    for block in blocks(page.read_text(encoding="utf-8")):
        if block.heading.lower().startswith("try it") and current.title != block.heading:
            current = Scenario(rel, block.heading)
            found.append(current)
            pending = None
        if block.lang in COMMAND_LANGS:
            commands = commands_of(block.body, rel, block.line)
            current.commands.extend(commands)
            # Output belongs to the last command that runs here: a docker or CI command
            # after it (the README's set-up block) cannot show checked output anyway.
            runnable = [c for c in commands if c.kind in RUNNABLE]
            pending = (runnable or commands or [None])[-1]
        elif block.lang == OUTPUT_LANG and block.follows_command and pending is not None:
            pending.expect = block.body
            pending = None
        else:
            pending = None
    return [s for s in found if s.commands]


def all_scenarios(root: Path = REPO) -> list[Scenario]:
    return [s for page in doc_pages(root) for s in scenarios(page, root)]


# ---------------------------------------------------------------------- matching


def _pattern(expected_line: str) -> re.Pattern[str]:
    pieces = [re.escape(_squash(piece)) for piece in expected_line.split("...")]
    return re.compile(".*".join(pieces))


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


def first_mismatch(expected: str, actual: str) -> str | None:
    """``None`` if ``actual`` shows ``expected``; else the expected line not found.

    Each non-blank expected line must appear in the output, in order, as part of one
    output line; runs of whitespace compare equal and ``...`` stands for any text (a
    line that is just ``...`` is only a visual gap).
    """
    out_lines = [_squash(line) for line in actual.splitlines()]
    position = 0
    for raw in expected.splitlines():
        if not raw.strip() or raw.strip() == "...":
            continue
        pattern = _pattern(raw)
        while position < len(out_lines) and not pattern.search(out_lines[position]):
            position += 1
        if position == len(out_lines):
            return raw.strip()
        position += 1
    return None


def normalise(output: str, names: Mapping[str, str]) -> str:
    """Replace a test's private names (topic, group, database) by the documented ones."""
    for private in sorted(names, key=len, reverse=True):
        output = output.replace(private, names[private])
    return output


# ---------------------------------------------------------------------- the shell


class ShellError(AssertionError):
    pass


@dataclass
class Result:
    rc: int
    output: str


class ShellSession:
    """One ``bash`` fed command by command, like a reader's terminal.

    Job control is on (``set -m``) so that every background job gets its own process
    group that a SIGINT (Ctrl-C) reaches, as in a terminal. A command's stdin is
    /dev/null: its stdin here is this session's own input.
    """

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self._mark = f"__docs_{uuid.uuid4().hex}__"
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.background: list[tuple[int, Command]] = []
        self._send("set -m")
        self.run("true", timeout=30)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, text: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(text + "\n")
        self._proc.stdin.flush()

    def run(self, text: str, timeout: float) -> Result:
        """Run ``text`` (stdin from /dev/null) and return its status and output."""
        self._send("{ " + text + "\n} </dev/null")
        self._send(f'printf "\\n{self._mark} %s\\n" "$?"')
        return self._collect(timeout, text)

    def _collect(self, timeout: float, what: str) -> Result:
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ShellError(
                    f"`{what}` did not finish within {timeout:g}s; output so far:\n"
                    + "".join(out)[-4000:]
                )
            try:
                line = self._lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                raise ShellError(f"the shell exited while running `{what}`:\n" + "".join(out))
            if line.startswith(self._mark):
                text = "".join(out)
                # The marker's printf starts with a newline of its own.
                text = text[:-1] if text.endswith("\n") else text
                return Result(int(line.split()[1]), text)
            out.append(line)

    def last_background_pid(self, timeout: float = 30) -> int:
        result = self.run('echo "pid=$!"', timeout)
        match = re.search(r"pid=(\d+)", result.output)
        if not match:
            raise ShellError(f"no background job: {result.output}")
        return int(match.group(1))

    def environment(self, timeout: float = 30) -> tuple[Path, dict[str, str]]:
        """The shell's current directory and exported environment (after ``source``,
        ``export``, ``cd``): what a command typed now would run with."""
        result = self.run("pwd; env -0", timeout)
        cwd, _, raw = result.output.partition("\n")
        env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        return Path(cwd), env

    def signal_job(self, pid: int, sig: signal.Signals) -> None:
        """Signal the job's whole process group, as a terminal's Ctrl-C does."""
        # A pipeline's group is led by its first process; ``$!`` is its last.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), sig)

    def wait_job(self, pid: int, timeout: float) -> int:
        """The job's exit status (bash remembers it for finished jobs too)."""
        return self.run(f"wait {pid}", timeout).rc

    def alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A finished job that bash has not reaped yet is a zombie: not alive.
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return False
        return status != "Z"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)


_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)


def plain(text: str) -> str:
    """Terminal output as text: escape sequences removed, every carriage return a newline."""
    return _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


class Terminal:
    """One command in a pseudo-terminal, the way a reader runs it in a terminal window.

    The command is the session leader of a new session whose controlling terminal is
    the pty, so Ctrl-C is what a keyboard sends: the byte ``^C``, which the terminal
    turns into SIGINT for the foreground process group. Programs see a terminal: rich
    draws its live views and structlog writes its console format.
    """

    def __init__(
        self, code: str, env: Mapping[str, str], cwd: Path, log: Path, size: tuple[int, int]
    ) -> None:
        master, slave = pty.openpty()
        rows, columns = size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._master = master
        self._log = log
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        try:
            # util-linux setsid: a new session, with stdin (the pty) as its terminal.
            self.proc = subprocess.Popen(
                ["setsid", "--ctty", "bash", "--noprofile", "--norc", "-c", code],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=dict(env),
            )
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self._log.open("ab") as log:
            while True:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # EIO: the last process holding the pty exited
                    return
                if not chunk:
                    return
                log.write(chunk)
                log.flush()
                with self._lock:
                    self._chunks.append(chunk)

    def output(self) -> str:
        with self._lock:
            raw = b"".join(self._chunks)
        return plain(raw.decode("utf-8", errors="replace"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ctrl_c(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, b"\x03")

    def wait(self, timeout: float) -> int:
        """The exit status as a shell reports it (128 + N for death by signal N)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return 128 - rc if rc < 0 else rc

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.alive():
            self.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self._master)


def tracked_top_level(repo: Path) -> set[str]:
    """Top-level names of the files git tracks (everything but the obvious litter when
    this is not a git checkout)."""
    result = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=False)
    if result.returncode == 0:
        return {path.split("/", 1)[0] for path in result.stdout.decode().split("\0") if path}
    return {
        entry.name
        for entry in repo.iterdir()
        if entry.suffix != ".log" and not entry.name.startswith((".coverage", ".env"))
    }


#: Scripts that write into the checkout itself rather than into ``.stack``: the shadow
#: gets copies of them instead of wrappers (README: ``scripts/setup_local.sh --env-only``).
WRITES_CHECKOUT = frozenset({"setup_local.sh"})


def shadow_checkout(target: Path, repo: Path = REPO, stack_dir: Path | None = None) -> Path:
    """A working directory that looks like the repository root to the docs' commands.

    Files and folders are symlinks, so nothing is copied, except that each executable
    in ``scripts/`` is a tiny wrapper that execs the real one: the scripts find the
    repository from their own path, and must find the real one (its ``.stack``).
    Whatever the commands write (``.env``, log files) stays in ``target``. ``.stack``
    points at ``stack_dir`` when the stack lives elsewhere (``STACK_DIR``).
    """
    target.mkdir(parents=True, exist_ok=True)
    # Only what the repository tracks, plus the virtualenv: a stray file in the working
    # tree (a reader's consumer.log) must not become a symlink the commands write through.
    for name in sorted(tracked_top_level(repo) | {".venv"}):
        if name in (".env", ".git", "scripts", ".stack") or not (repo / name).exists():
            continue
        (target / name).symlink_to(repo / name)
    (target / ".stack").symlink_to(stack_dir or repo / ".stack")
    scripts = target / "scripts"
    scripts.mkdir()
    for script in (repo / "scripts").iterdir():
        if script.name in WRITES_CHECKOUT:
            # It writes the checkout's own files (.env, .secrets/): a copy finds the
            # shadow as its repository, so they stay in ``target``.
            shutil.copy2(script, scripts / script.name)
        elif script.is_file() and os.access(script, os.X_OK):
            wrapper = scripts / script.name
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(script))} "$@"\n')
            wrapper.chmod(0o755)
        else:
            (scripts / script.name).symlink_to(script)
    return target


# ---------------------------------------------------------------------- running

#: How long a command may run, and how long the docs' promised output may take.
RUN_TIMEOUT_S = 180.0
SHOW_TIMEOUT_S = 90.0
#: Rows and columns of the pseudo-terminal of Ctrl-C commands. Wide, because the test's
#: private topic and group names are longer than the documented ones.
TERMINAL_SIZE = (50, 160)
#: Exit statuses of a command stopped with Ctrl-C: a clean exit, or death by SIGINT.
CTRL_C_OK = (0, 128 + signal.SIGINT)


@dataclass
class Runner:
    """Runs a scenario's commands in a :class:`ShellSession`, checking what they show."""

    session: ShellSession
    names: Mapping[str, str]
    logs: Path
    jobs: list[tuple[int, Command]] = field(default_factory=list)
    #: Documented text -> what this session types instead (the stack's ports when they
    #: are not the defaults); ``names`` maps the output back.
    rewrites: Mapping[str, str] = field(default_factory=dict)
    #: The session's own stack folder, which ``scripts/local_stack.sh stop`` must not stop.
    session_stack: Path | None = None

    def foreign_stack(self) -> Path | None:
        """The stack folder the shell's ``STACK_DIR`` names, when it is not the session's:
        a stack the scenario started itself (the 3-node stack of the replication page)."""
        cwd, env = self.session.environment()
        if "STACK_DIR" not in env or self.session_stack is None:
            return None
        named = (cwd / env["STACK_DIR"]).resolve()
        return None if named == self.session_stack.resolve() else named

    def typed(self, text: str) -> str:
        """What is typed for a documented command: its addresses rewritten to this stack's."""
        for documented in sorted(self.rewrites, key=len, reverse=True):
            text = text.replace(documented, self.rewrites[documented])
        return text

    def run(self, scenario: Scenario) -> None:
        try:
            for command in scenario.commands:
                if command.kind is Kind.RUN:
                    self.run_once(command)
                elif command.kind is Kind.LONG:
                    self.run_until_interrupted(command)
                elif command.kind is Kind.BACKGROUND:
                    self.start_background(command)
                elif command.kind is Kind.STACK_STOP and self.foreign_stack() is not None:
                    self.run_once(command)
                # The other kinds are checked statically by test_docs.py.
        except BaseException:
            self.stop_background(check=False)
            raise
        self.stop_background(check=True)

    def record(self, command: Command, rc: int, output: str) -> None:
        """With FOODPIPE_DOCS_TRANSCRIPT=FILE, append what ran and what it printed: the
        way to see real output when writing a ```text block."""
        path = os.environ.get("FOODPIPE_DOCS_TRANSCRIPT")
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(f"$ {command.text}    # {command.where}, exit {rc}\n")
                out.write(normalise(output, self.names).rstrip("\n") + "\n\n")

    def _shows(self, command: Command, output: str) -> str | None:
        assert command.expect is not None
        return first_mismatch(command.expect, normalise(output, self.names))

    def run_once(self, command: Command) -> None:
        if command.expect is not None and command.read_only:
            self._poll_until_shown(command)
            return
        result = self.session.run(self.typed(command.text), RUN_TIMEOUT_S)
        self.record(command, result.rc, result.output)
        shown = normalise(result.output, self.names)
        if result.rc != 0:
            raise AssertionError(
                f"{command.where}: `{command.code}` exited {result.rc}; output:\n{shown}"
            )
        if command.expect is not None:
            missing = self._shows(command, result.output)
            if missing is not None:
                raise AssertionError(
                    f"{command.where}: `{command.code}` did not show `{missing}`; output:\n{shown}"
                )

    def _poll_until_shown(self, command: Command) -> None:
        last = Result(-1, "")

        def shown() -> bool:
            nonlocal last
            last = self.session.run(self.typed(command.text), RUN_TIMEOUT_S)
            return last.rc == 0 and self._shows(command, last.output) is None

        try:
            self._wait_shown(command, shown, lambda: last)
        finally:
            self.record(command, last.rc, last.output)

    def _wait_shown(
        self, command: Command, shown: Callable[[], bool], last: Callable[[], Result]
    ) -> None:
        wait_until(
            shown,
            timeout=SHOW_TIMEOUT_S,
            interval=1.0,
            message=lambda: (
                f"{command.where}: `{command.code}` to show `{self._shows(command, last().output)}`"
                f" (last exit status {last().rc}); last output:\n"
                + normalise(last().output, self.names)
            ),
        )

    def run_until_interrupted(self, command: Command) -> None:
        """Run it in a terminal; when the output the docs show has appeared, press Ctrl-C."""
        if command.expect is None:
            raise AssertionError(
                f"{command.where}: `{command.code}` runs until Ctrl-C, so the docs must show "
                "its output in a ```text block right after it (the test waits for it)"
            )
        cwd, env = self.session.environment()
        log = self.logs / f"terminal-{command.line}.log"
        terminal = Terminal(self.typed(command.code), env, cwd, log, TERMINAL_SIZE)
        try:

            def shown() -> bool:
                return self._shows(command, terminal.output()) is None

            def describe() -> str:
                output = normalise(terminal.output(), self.names)
                missing = self._shows(command, terminal.output())
                return f"{command.where}: `{command.code}` to show `{missing}`; output:\n{output}"

            # Some views only print when they stop (rich's live view, when the output is
            # not a terminal): waiting ends when the output is there or the command ends.
            wait_until(
                lambda: shown() or not terminal.alive(),
                timeout=SHOW_TIMEOUT_S,
                interval=0.2,
                message=describe,
            )
            terminal.ctrl_c()
            rc = terminal.wait(30)
        finally:
            terminal.close()
            self.record(command, terminal.proc.returncode or 0, terminal.output())
        output = terminal.output()
        missing = self._shows(command, output)
        if missing is not None or rc not in CTRL_C_OK:
            raise AssertionError(
                f"{command.where}: `{command.code}` exited {rc} after Ctrl-C (expected one of "
                f"{CTRL_C_OK}); missing `{missing}`; output:\n" + normalise(output, self.names)
            )

    def start_background(self, command: Command) -> None:
        result = self.session.run(self.typed(command.text), RUN_TIMEOUT_S)
        self.record(command, result.rc, result.output)
        if result.rc != 0:
            raise AssertionError(f"{command.where}: `{command.code}` failed: {result.output}")
        self.jobs.append((self.session.last_background_pid(), command))

    def stop_background(self, *, check: bool) -> None:
        """Stop what the scenario left running (SIGTERM, as ``docker stop`` would).

        A job that had already ended by itself with an error status (1-127) failed:
        a service the docs start must not crash.
        """
        crashed: list[str] = []
        for pid, command in self.jobs:
            was_running = self.session.alive(pid)
            if was_running:
                self.session.signal_job(pid, signal.SIGTERM)
            rc = self.session.wait_job(pid, 60)
            # 127: not a child any more, because the docs' own `wait` collected it.
            if not was_running and 0 < rc < 127:
                crashed.append(f"{command.where}: `{command.code}` exited {rc} by itself")
        self.jobs.clear()
        if crashed and check:
            raise AssertionError("; ".join(crashed))
