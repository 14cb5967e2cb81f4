"""How the docs test reads Markdown: blocks, commands, scenarios, expected output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ..docsexec import (
    Kind,
    Runner,
    blocks,
    classify,
    commands_of,
    first_mismatch,
    normalise,
    plain,
    scenarios,
    shadow_checkout,
    split_comment,
)

PAGE = """# Title

```bash
source .venv/bin/activate
foodpipe consume > consumer.log 2>&1 &   # in the background
foodpipe status
```

Some prose.

```text
group order-processors (stable, 1 member)
```

## Try it: one

```bash
tail -f consumer.log    # Ctrl-C to stop
```

```text
..."event": "consuming"...
```

```bash
docker compose logs -f consumer   # Ctrl-C to stop
```

### Try it: two

- In a list:

  ```bash
  python - <<'EOF'
  print("# not a comment")
  EOF
  scripts/local_stack.sh pg-stop
  ```

## Diagram

```text
a diagram, not output: a heading came first
```
"""


def write(tmp_path: Path, text: str = PAGE) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_blocks_know_their_language_heading_and_line() -> None:
    found = list(blocks(PAGE))
    assert [b.lang for b in found] == ["bash", "text", "bash", "text", "bash", "bash", "text"]
    assert found[0].line == 4
    assert found[2].heading == "Try it: one"
    assert found[1].follows_command
    assert not found[-1].follows_command  # a heading sits between it and the bash block


def test_indented_fences_lose_their_indentation() -> None:
    block = next(b for b in blocks(PAGE) if "python" in b.body)
    assert block.body.startswith("python - <<'EOF'\n")


@pytest.mark.parametrize(
    ("line", "code", "comment"),
    [
        ("foodpipe status   # look", "foodpipe status", "look"),
        ("echo 'a # b'  # c", "echo 'a # b'", "c"),
        ('echo "x#y"', 'echo "x#y"', ""),
        ("echo a\\#b # c", "echo a\\#b", "c"),
    ],
)
def test_split_comment(line: str, code: str, comment: str) -> None:
    assert split_comment(line) == (code, comment)


@pytest.mark.parametrize(
    ("code", "comment", "kind"),
    [
        ("foodpipe status", "", Kind.RUN),
        ("foodpipe consume > c.log 2>&1 &", "", Kind.BACKGROUND),
        ("a && b", "", Kind.RUN),
        ("foodpipe status --watch", "refreshes; Ctrl-C to stop", Kind.LONG),
        ("docker compose logs -f consumer", "Ctrl-C to stop", Kind.DOCKER),
        ("docker-compose up", "", Kind.DOCKER),
        ("scripts/test.sh", "", Kind.CI_ENTRY),
        (".venv/bin/pytest tests/unit", "", Kind.PYTEST),
        ("scripts/local_stack.sh stop", "", Kind.STACK_STOP),
        ("LOG_LEVEL=DEBUG foodpipe produce --count 5", "", Kind.RUN),
        # Long-running without saying so: still run until their output, then Ctrl-C.
        ("foodpipe produce --rate 5", "", Kind.LONG),
        ("foodpipe consume", "", Kind.LONG),
        ("scripts/run_local.sh", "run it", Kind.LONG),
        ("scripts/run_local.sh --count 100", "", Kind.RUN),
        ("scripts/run_local.sh stop", "", Kind.RUN),
        ("foodpipe status --json", "", Kind.RUN),
        ("foodpipe status --watch --json", "", Kind.LONG),
    ],
)
def test_classify(code: str, comment: str, kind: Kind) -> None:
    assert classify(code, comment) is kind


def test_heredocs_and_continuations_are_one_command() -> None:
    body = "python - <<'EOF'\nprint(1)\n# kept\nEOF\nfoodpipe produce \\\n  --count 3\n# note\n"
    commands = commands_of(body, "p.md", 10)
    assert [c.text for c in commands] == [
        "python - <<'EOF'\nprint(1)\n# kept\nEOF",
        "foodpipe produce \\\n  --count 3",
    ]
    assert [c.line for c in commands] == [10, 14]
    assert commands[1].words == ["foodpipe", "produce", "--count", "3"]


def test_scenarios_split_at_try_it_headings(tmp_path: Path) -> None:
    found = scenarios(write(tmp_path), tmp_path)
    assert [s.title for s in found] == ["page", "Try it: one", "Try it: two"]
    page, one, two = found
    assert page.commands[-1].expect == "group order-processors (stable, 1 member)"
    assert page.commands[-1].read_only
    assert one.commands[0].kind is Kind.LONG
    assert one.commands[0].expect == '..."event": "consuming"...'
    assert one.commands[1].expect is None
    assert two.is_fault
    assert not one.is_fault
    assert two.commands[-1].expect is None  # the diagram comes after a heading


def test_expected_lines_appear_in_order_with_ellipses() -> None:
    output = "topic a  ·  group b (stable, 2 members)  ·  03:16:14\nrows in orders  100   \nx\n"
    assert first_mismatch("group b (stable, 2 members)  ·  ...\nrows in orders 100", output) is None
    assert first_mismatch("...\nrows in orders ...", output) is None
    assert first_mismatch("rows in orders 100\ntopic a", output) == "topic a"
    assert first_mismatch("rows in orders 99", output) == "rows in orders 99"


def test_private_names_map_back_longest_first() -> None:
    names = {"orders-t1.dlq": "food-orders.dlq", "orders-t1": "food-orders"}
    assert normalise("orders-t1 and orders-t1.dlq", names) == "food-orders and food-orders.dlq"


def test_terminal_output_loses_escape_codes() -> None:
    assert plain("\x1b[2K\x1b[1Aabc\x1b[0m\r\ndef\rghi") == "abc\ndef\nghi"


def test_shadow_checkout_links_only_tracked_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (repo / "scripts" / "tool.sh").chmod(0o755)
    (repo / "README.md").write_text("x")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "consumer.log").write_text("a reader's litter")
    (repo / ".venv").mkdir()
    shadow = shadow_checkout(tmp_path / "shadow", repo, stack_dir=tmp_path / "stack")
    assert (shadow / "README.md").is_symlink()
    assert (shadow / ".venv").is_symlink()
    assert not (shadow / "consumer.log").exists()
    assert os.readlink(shadow / ".stack") == str(tmp_path / "stack")
    # Scripts are wrappers that exec the real file, so they find the real repository.
    out = subprocess.run(
        [str(shadow / "scripts" / "tool.sh")], capture_output=True, text=True, check=True
    )
    assert out.stdout == "tool\n"
    assert not (shadow / "scripts" / "tool.sh").is_symlink()


@pytest.mark.parametrize(
    ("code", "read_only"),
    [
        ("scripts/kafka-tool.sh topics --bootstrap-server b --describe --topic t", True),
        ("scripts/kafka-tool.sh consumer-groups --bootstrap-server b --describe --group g", True),
        ("scripts/kafka-tool.sh consumer-groups --group g --reset-offsets --to-earliest", False),
        ("scripts/kafka-tool.sh topics --bootstrap-server b --create --topic t", False),
        ("scripts/kafka-tool.sh console-consumer --topic t --partition 0", True),
        ("scripts/kafka-tool.sh configs --alter --entity-name t", False),
    ],
)
def test_kafka_tools_that_only_look_are_re_run(code: str, read_only: bool) -> None:
    (command,) = commands_of(code, "page.md", 1)
    assert command.read_only is read_only


def test_documented_addresses_and_names_are_typed_as_the_sessions() -> None:
    runner = Runner(
        session=None,  # type: ignore[arg-type]  # typed() needs no shell
        names={},
        logs=Path("."),
        rewrites={":19092": ":39092", "=19192": "=39192", "food-orders": "docs-1"},
    )
    assert runner.typed("x --bootstrap-server 127.0.0.1:19092 --topic food-orders") == (
        "x --bootstrap-server 127.0.0.1:39092 --topic docs-1"
    )
    assert runner.typed("export KAFKA_PORT=19192") == "export KAFKA_PORT=39192"
