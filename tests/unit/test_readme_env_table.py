"""The README's environment-variable table is exactly what the Settings object generates.

The table sits between two HTML comments in README.md. Regenerate it with
``foodpipe config --markdown`` and paste the output between them.
"""

from __future__ import annotations

import difflib
import re

import pytest

from foodpipe.cli import main
from foodpipe.commands.config import env_table_markdown
from foodpipe.settings import Settings, env_var_name

from ..support import REPO

BEGIN = "<!-- BEGIN env-table"
END = "<!-- END env-table -->"


def readme_table() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.find(BEGIN)
    assert start >= 0, f"README.md has no '{BEGIN} ... -->' marker"
    body_start = text.index("-->", start) + len("-->")
    end = text.find(END, body_start)
    assert end >= 0, f"README.md has no '{END}' marker after '{BEGIN}'"
    return text[body_start:end].strip("\n") + "\n"


def test_readme_table_equals_the_generated_one() -> None:
    expected = env_table_markdown()
    actual = readme_table()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "README.md",
                "foodpipe config --markdown",
            )
        )
        pytest.fail(
            "README.md's environment table is out of date. Replace the lines between "
            f"the env-table markers with the output of `foodpipe config --markdown`:\n{diff}",
            pytrace=False,
        )


def test_every_setting_has_a_row_and_a_description() -> None:
    table = env_table_markdown()
    names = re.findall(r"^\| `([A-Z0-9_]+)` \|", table, flags=re.MULTILINE)
    assert names == [env_var_name(name) for name in Settings.model_fields]
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} needs a description for the README table"


def test_secrets_show_only_their_placeholder() -> None:
    # The default password is the documented placeholder that production refuses;
    # it is the only "secret" the table may ever show.
    table = env_table_markdown()
    row = next(line for line in table.splitlines() if "`POSTGRES_PASSWORD`" in line)
    assert "`change-me`" in row


def test_cell_text_cannot_break_the_table() -> None:
    for line in env_table_markdown().splitlines()[2:]:
        # Three cells: a '|' inside a description is escaped, so it splits no cell.
        assert len(re.split(r"(?<!\\)\|", line)) == 5, line


def test_the_cli_prints_the_same_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--env-file", "/dev/null", "config", "--markdown"]) == 0
    assert capsys.readouterr().out == env_table_markdown()


def test_check_and_markdown_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--env-file", "/dev/null", "config", "--check", "--markdown"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_every_variable_of_env_example_is_documented_in_the_readme() -> None:
    from ..compose_support import read_env_file

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", readme, flags=re.MULTILINE))
    missing = sorted(set(read_env_file().documented) - documented)
    assert not missing, f"README.md has no table row for {missing} (see .env.example)"
