"""scripts/healthcheck.sh, setup_local.sh and deploy_aws.sh, without Docker or an EC2 host.

The scripts are linted with shellcheck, then run for real against stand-ins: ``ssh`` runs
the remote command on this machine, ``docker`` records its arguments and answers like a
healthy engine, ``systemctl``/``sudo``/``swapon`` do nothing harmful. That checks what
the scripts do (files copied, .env generated once, images built, stack started, health
verified, idempotence) everywhere except inside a real Docker engine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ..support import REPO

SCRIPTS = ["healthcheck.sh", "setup_local.sh", "deploy_aws.sh"]

FAKE_DOCKER = """#!/usr/bin/env bash
echo "docker $*" >> "$FAKE_LOG"
case "$*" in
  "info") exit 0 ;;
  "compose version"*) echo "Docker Compose version v2.29.7"; exit 0 ;;
  "version --format"*) echo "docker 27.0.0"; exit 0 ;;
  *" run --rm --no-deps -T consumer health"*)
    echo "foodpipe health: HEALTHY (6/6 checks ok)"
    exit "${FAKE_HEALTH_RC:-0}"
    ;;
esac
exit 0
"""

FAKE_SSH = """#!/usr/bin/env bash
# ssh [-o OPT]... [-i KEY] HOST [COMMAND...]: run COMMAND here, as if on HOST.
echo "ssh $*" >> "$FAKE_LOG"
while [[ $1 == -* ]]; do shift 2; done
shift  # the host
if (($#)); then exec bash -c "$*"; fi
"""

PASSTHROUGH_SUDO = """#!/usr/bin/env bash
exec "$@"
"""

QUIET = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
"""

SWAPON = """#!/usr/bin/env bash
echo "/swapfile file 1G 0B -2"
"""


def run(
    argv: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fakes(tmp_path: Path) -> dict[str, str]:
    """PATH with stand-ins first; FAKE_LOG collects every call."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    write_exec(bin_dir / "docker", FAKE_DOCKER)
    write_exec(bin_dir / "ssh", FAKE_SSH)
    write_exec(bin_dir / "sudo", PASSTHROUGH_SUDO)
    write_exec(bin_dir / "systemctl", QUIET)
    write_exec(bin_dir / "usermod", QUIET)
    write_exec(bin_dir / "swapon", SWAPON)
    log = tmp_path / "calls.log"
    log.write_text("")
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "LANG": "C.UTF-8",
    }


def calls(env: dict[str, str]) -> list[str]:
    return Path(env["FAKE_LOG"]).read_text().splitlines()


# ---------------------------------------------------------------- lint


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_are_executable(script: str) -> None:
    path = REPO / "scripts" / script
    assert os.access(path, os.X_OK), f"chmod +x scripts/{script}"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_finds_nothing(script: str) -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -r requirements-dev.txt)")
    result = subprocess.run(
        [shellcheck, str(REPO / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_script(script: str, fakes: dict[str, str]) -> None:
    result = run([str(REPO / "scripts" / script), "--help"], fakes)
    assert result.returncode == 0
    assert "Usage: scripts/" in result.stderr


# ---------------------------------------------------------------- deploy_aws.sh


def test_deploy_dry_run_prints_every_step_and_touches_nothing(fakes: dict[str, str]) -> None:
    result = run(
        [
            str(REPO / "scripts" / "deploy_aws.sh"),
            "--host",
            "ec2-user@203.0.113.10",
            "--key",
            "/nonexistent.pem",
            "--dry-run",
        ],
        fakes,
    )
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"^(\d+)\. (.+)$", result.stdout, re.MULTILINE)
    assert [int(n) for n, _ in steps] == [1, 2, 3, 4, 5, 6]
    text = result.stdout
    for expected in (
        "apt-get install -y -qq docker.io",
        "dnf install -y docker",
        "/swapfile",
        "docker-compose.aws.yml",
        "scripts/setup_local.sh --env-only",
        "docker build --pull -t foodpipe:local .",
        "up -d --remove-orphans",
        "scripts/healthcheck.sh --compose docker-compose.aws.yml --wait 300",
    ):
        assert expected in text, expected
    assert calls(fakes) == [], "a dry run must not run ssh or docker"
    assert "nothing was changed" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--local", "--host", "a@b"],
        ["--host", "a@b", "--compose-version", "latest"],
        ["--bogus"],
    ],
)
def test_deploy_refuses_bad_usage(argv: list[str], fakes: dict[str, str]) -> None:
    result = run([str(REPO / "scripts" / "deploy_aws.sh"), *argv], fakes)
    assert result.returncode == 2
    assert calls(fakes) == []


def test_deploy_over_ssh_copies_configures_starts_verifies_and_is_idempotent(
    fakes: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "opt-foodpipe"
    argv = [
        str(REPO / "scripts" / "deploy_aws.sh"),
        "--host",
        "ec2-user@203.0.113.10",
        "--dir",
        str(target),
    ]
    first = run(argv, fakes, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr

    # 3. the files the stack needs, and nothing else
    for needed in (
        "Dockerfile",
        ".dockerignore",
        "docker-compose.aws.yml",
        ".env.example",
        "requirements.txt",
        "pyproject.toml",
        "src/foodpipe/cli.py",
        "src/database/init.sql",
        "scripts/healthcheck.sh",
    ):
        assert (target / needed).is_file(), needed
    assert not (target / "tests").exists()
    assert not list(target.rglob("__pycache__"))

    # 4. .env with generated passwords, private
    env_file = target / ".env"
    text = env_file.read_text()
    passwords = dict(re.findall(r"^(\w+_PASSWORD)=(.*)$", text, re.MULTILINE))
    assert set(passwords) == {"POSTGRES_PASSWORD", "POSTGRES_ADMIN_PASSWORD"}
    for value in passwords.values():
        assert len(value) >= 24
        assert value != "change-me"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    # 5. and 6. build, start, verify, in that order
    docker = [line for line in calls(fakes) if line.startswith("docker ")]
    build = docker.index("docker build --pull -t foodpipe:local .")
    up = docker.index("docker compose -f docker-compose.aws.yml up -d --remove-orphans")
    health = next(
        i for i, line in enumerate(docker) if "run --rm --no-deps -T consumer health" in line
    )
    assert build < up < health
    assert "--wait 300" in docker[health]
    assert any(line.startswith("systemctl enable --now docker") for line in calls(fakes))

    # Again: the same steps, and the passwords survive.
    (target / "src" / "stale_module.py").write_text("")
    second = run(argv, fakes, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert env_file.read_text() == text
    assert not (target / "src" / "stale_module.py").exists(), "src/ is replaced, not merged"


def test_deploy_fails_when_the_stack_is_unhealthy(fakes: dict[str, str], tmp_path: Path) -> None:
    fakes["FAKE_HEALTH_RC"] = "1"
    result = run(
        [str(REPO / "scripts" / "deploy_aws.sh"), "--host", "u@h", "--dir", str(tmp_path / "d")],
        fakes,
        timeout=120,
    )
    assert result.returncode == 1
    assert "deployed to" not in result.stderr


# ---------------------------------------------------------------- setup_local.sh


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A minimal checkout: the script and .env.example (the script works from its repo)."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "setup_local.sh", root / "scripts" / "setup_local.sh")
    shutil.copy2(REPO / ".env.example", root / ".env.example")
    return root


def test_setup_writes_env_once_with_generated_passwords(
    repo_copy: Path, fakes: dict[str, str]
) -> None:
    script = str(repo_copy / "scripts" / "setup_local.sh")
    assert run([script, "--env-only"], fakes).returncode == 0
    env_file = repo_copy / ".env"
    first = env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "change-me\n" not in first.split("# ---")[1], "placeholders were replaced"
    example = (repo_copy / ".env.example").read_text().splitlines()
    written = first.splitlines()
    assert len(written) == len(example)
    for old, new in zip(example, written, strict=True):
        if not old.startswith("POSTGRES_") or "_PASSWORD=" not in old:
            assert old == new

    assert run([script, "--env-only"], fakes).returncode == 0
    assert env_file.read_text() == first, "an existing .env is kept"

    # A variable the example sets and .env lacks is appended (a new secret generated).
    env_file.write_text("\n".join(line for line in written if "ADMIN_PASSWORD=" not in line) + "\n")
    result = run([script, "--env-only"], fakes)
    assert "added POSTGRES_ADMIN_PASSWORD" in result.stderr
    appended = env_file.read_text().splitlines()[-1]
    assert appended.startswith("POSTGRES_ADMIN_PASSWORD=")
    assert appended != "POSTGRES_ADMIN_PASSWORD=change-me"


@pytest.mark.parametrize("mode", ["--compose", "--native"])
def test_setup_dry_run_lists_the_steps_and_writes_nothing(
    mode: str, repo_copy: Path, fakes: dict[str, str]
) -> None:
    result = run([str(repo_copy / "scripts" / "setup_local.sh"), mode, "--dry-run"], fakes)
    assert result.returncode == 0, result.stderr
    assert not (repo_copy / ".env").exists()
    assert "healthcheck.sh" in result.stdout
    if mode == "--compose":
        assert "up -d --build --remove-orphans" in result.stdout
    else:
        assert "scripts/local_stack.sh start" in result.stdout
    assert calls(fakes) == [] or all(
        line.startswith("docker compose version") for line in calls(fakes)
    )


# ---------------------------------------------------------------- healthcheck.sh


def test_healthcheck_native_runs_foodpipe_health_with_the_options(
    fakes: dict[str, str], tmp_path: Path
) -> None:
    fake_foodpipe = tmp_path / "foodpipe"
    write_exec(fake_foodpipe, '#!/usr/bin/env bash\necho "foodpipe $*" >> "$FAKE_LOG"\nexit 3\n')
    env = {**fakes, "FOODPIPE": str(fake_foodpipe)}
    result = run(
        [str(REPO / "scripts" / "healthcheck.sh"), "--native", "--max-lag", "5", "--json"], env
    )
    assert result.returncode == 3, "the exit code of foodpipe health is the script's"
    assert calls(env)[-1] == "foodpipe health --max-lag 5 --json"


def test_healthcheck_compose_runs_the_check_in_a_consumer_container(
    fakes: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "deploy"
    project.mkdir()
    shutil.copy2(REPO / "docker-compose.aws.yml", project / "docker-compose.aws.yml")
    (project / ".env").write_text("POSTGRES_PASSWORD=x\nPOSTGRES_ADMIN_PASSWORD=y\n")
    result = run(
        [
            str(REPO / "scripts" / "healthcheck.sh"),
            "--compose",
            str(project / "docker-compose.aws.yml"),
            "--min-members",
            "2",
        ],
        fakes,
    )
    assert result.returncode == 0, result.stderr
    assert calls(fakes)[-1] == (
        f"docker compose -f {project / 'docker-compose.aws.yml'} run --rm --no-deps -T "
        "consumer health --min-members 2"
    )


def test_healthcheck_compose_without_env_says_how_to_fix_it(
    fakes: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "bare"
    project.mkdir()
    shutil.copy2(REPO / "docker-compose.yml", project / "docker-compose.yml")
    result = run(
        [
            str(REPO / "scripts" / "healthcheck.sh"),
            "--compose",
            str(project / "docker-compose.yml"),
        ],
        fakes,
    )
    assert result.returncode == 2
    assert "cp .env.example .env" in result.stderr


def test_healthcheck_compose_can_use_another_env_file(
    fakes: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "elsewhere"
    project.mkdir()
    shutil.copy2(REPO / "docker-compose.yml", project / "docker-compose.yml")
    env_file = tmp_path / "test.env"
    env_file.write_text("POSTGRES_PASSWORD=x\nPOSTGRES_ADMIN_PASSWORD=y\n")
    result = run(
        [
            str(REPO / "scripts" / "healthcheck.sh"),
            "--compose",
            str(project / "docker-compose.yml"),
            "--env-file",
            str(env_file),
        ],
        fakes,
    )
    assert result.returncode == 0, result.stderr
    assert calls(fakes)[-1] == (
        f"docker compose -f {project / 'docker-compose.yml'} --env-file {env_file} run --rm "
        "--no-deps -T consumer health"
    )
