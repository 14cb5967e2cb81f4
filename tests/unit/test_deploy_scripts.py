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

SCRIPTS = ["healthcheck.sh", "setup_local.sh", "deploy_aws.sh", "pin_images.sh"]

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

    # 4. .env, private, and the generated passwords as Compose secrets beside it
    env_file = target / ".env"
    text = env_file.read_text()
    assert not re.findall(r"^\w+_PASSWORD=", text, re.MULTILINE), "no password in .env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    passwords = assert_generated_secrets(target)

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
    assert assert_generated_secrets(target) == passwords
    assert not (target / "src" / "stale_module.py").exists(), "src/ is replaced, not merged"


SECRET_FILES = ("postgres_password", "postgres_admin_password")


def assert_generated_secrets(root: Path) -> dict[str, str]:
    """The two password files that .env names: generated, distinct, in a private
    directory, readable by the containers' non-root users (Compose mounts them as they
    are)."""
    env = dict(re.findall(r"^(\w+)=(.*)$", (root / ".env").read_text(), re.MULTILINE))
    assert env["POSTGRES_PASSWORD_FILE"] == "./.secrets/postgres_password"
    assert env["POSTGRES_ADMIN_PASSWORD_FILE"] == "./.secrets/postgres_admin_password"
    directory = root / ".secrets"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    values = {}
    for name in SECRET_FILES:
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        values[name] = path.read_text()
        assert re.fullmatch(r"[A-Za-z0-9]{24,}\n", values[name]), name
    assert len(set(values.values())) == 2
    return values


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


def test_setup_writes_env_and_the_secrets_once(repo_copy: Path, fakes: dict[str, str]) -> None:
    script = str(repo_copy / "scripts" / "setup_local.sh")
    assert run([script, "--env-only"], fakes).returncode == 0
    env_file = repo_copy / ".env"
    first = env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert first == (repo_copy / ".env.example").read_text(), "no placeholder to replace"
    secrets = assert_generated_secrets(repo_copy)

    assert run([script, "--env-only"], fakes).returncode == 0
    assert env_file.read_text() == first, "an existing .env is kept"
    assert assert_generated_secrets(repo_copy) == secrets, "existing secrets are kept"

    # A variable the example sets and .env lacks is appended.
    written = first.splitlines()
    env_file.write_text("\n".join(line for line in written if "ADMIN_PASSWORD_FILE=" not in line))
    result = run([script, "--env-only"], fakes)
    assert "added POSTGRES_ADMIN_PASSWORD_FILE" in result.stderr
    assert env_file.read_text().splitlines()[-1] == (
        "POSTGRES_ADMIN_PASSWORD_FILE=./.secrets/postgres_admin_password"
    )
    assert assert_generated_secrets(repo_copy) == secrets


def test_setup_moves_the_passwords_of_an_older_env_into_the_secrets(
    repo_copy: Path, fakes: dict[str, str]
) -> None:
    """An .env from before Compose secrets held the passwords; the database volume was
    initialised with the owner's, so those values move, they are not regenerated."""
    env_file = repo_copy / ".env"
    env_file.write_text(
        "POSTGRES_PASSWORD=OldAppPassword0123456789ab\n"
        "KAFKA_TOPIC=food-orders\n"
        "POSTGRES_ADMIN_PASSWORD=OldOwnerPassword0123456789\n"
    )
    env_file.chmod(0o600)
    result = run([str(repo_copy / "scripts" / "setup_local.sh"), "--env-only"], fakes)
    assert result.returncode == 0, result.stderr
    assert "moved POSTGRES_PASSWORD from .env to ./.secrets/postgres_password" in result.stderr
    assert assert_generated_secrets(repo_copy) == {
        "postgres_password": "OldAppPassword0123456789ab\n",
        "postgres_admin_password": "OldOwnerPassword0123456789\n",
    }
    text = env_file.read_text()
    assert "Old" not in text, "the passwords left .env"
    assert "KAFKA_TOPIC=food-orders\n" in text
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


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
    assert "run scripts/setup_local.sh --env-only" in result.stderr


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
