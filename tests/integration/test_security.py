"""Security basics (reliability.md, "Security basics to test"), against real processes.

Covered here:

- no secret in git: every tracked file, and the whole history for the high-signal
  patterns (private keys, cloud keys, the passwords the local stack generated);
- a placeholder password is refused by the real CLI outside development mode;
- the least-privilege role that ``src/database/app_role.sql`` creates may only SELECT
  and INSERT on ``orders`` (and the local stack's live app role is that role);
- no log line or command output carries the database password: real ``foodpipe``
  processes run with a known password (with URL-special characters), at DEBUG, through
  success, wrong password and database-down paths, and their output is searched;
- oversized and hostile input cannot crash the consumer or bloat its memory.

Covered elsewhere, not repeated: ``.env.example`` holds placeholders only
(tests/unit/test_env_example.py), ports bound to 127.0.0.1 in both Compose files
(tests/unit/test_compose.py), the foodpipe image runs as a non-root user and the
Python services run hardened (tests/unit/test_dockerfile.py, test_compose.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from foodpipe.cli import COMMANDS
from foodpipe.settings import PLACEHOLDER_PASSWORDS
from tests.conftest import Pipeline, Stack
from tests.fault.harness import ANY_CLASS, Fault
from tests.poison import produce_records, record, valid_order
from tests.support import REPO, run_foodpipe, wait_until

CONTAINER_LIMIT_KB = 128 * 1024

# --------------------------------------------------------------------------- secrets in git

#: High-signal secret shapes: worth checking in every file and every past commit.
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(
        r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}", re.IGNORECASE
    ),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
}
#: ``scheme://user:password@host``
URL_CREDENTIAL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<user>[^:/@\s\"'<>]+):(?P<pw>[^@\s\"'<>/]+)@"
    r"(?P<host>[^:/\s\"'<>]*)(?::(?P<port>\d+))?"
)


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [REPO / name for name in out.split("\0") if name]


def text_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


#: Deliberately wrong passwords in documented examples of the refusal message.
DOCUMENTED_WRONG_PASSWORDS = frozenset({"wrong-password"})


def harmless_url_password(password: str, host: str, port: str | None) -> bool:
    """A placeholder, a mask, a variable, a documented wrong one, or nowhere to use it.

    Unit tests use URLs such as ``postgresql://u:p@h/db``: a host without a dot (other
    than localhost), no host at all, or port 1 reach no server, so whatever stands in
    the password position of such a URL is test data, not a credential.
    """
    if password in PLACEHOLDER_PASSWORDS or password in ("***", "...", "pw", "password"):
        return True
    if password in DOCUMENTED_WRONG_PASSWORDS:
        return True
    if password.startswith("$") or password.startswith("%(") or "{" in password:
        return True
    if port == "1" or not host:
        return True
    return "." not in host and host != "localhost" and not host[:1].isdigit()


def local_stack_secrets() -> list[str]:
    """Passwords ``scripts/local_stack.sh`` generated on this machine (never to be committed)."""
    values = []
    dirs = {REPO / ".stack", Path(os.environ.get("STACK_DIR") or REPO / ".stack")}
    for directory in dirs:
        for path in directory.glob("**/secrets.env"):
            for line in path.read_text().splitlines():
                if "=" in line:
                    value = line.split("=", 1)[1].strip()
                    if len(value) >= 12:
                        values.append(value)
    return values


def test_no_secret_is_in_a_tracked_file() -> None:
    # The test role's fixed password (tests/conftest.py) is tracked on purpose: that role
    # exists only on test servers. The stack's generated passwords must never be.
    secrets = local_stack_secrets()
    problems = []
    for path in tracked_files():
        content = text_of(path)
        if content is None:
            continue
        name = path.relative_to(REPO)
        for label, pattern in SECRET_PATTERNS.items():
            if pattern.search(content):
                problems.append(f"{name}: {label}")
        for match in URL_CREDENTIAL.finditer(content):
            if not harmless_url_password(match["pw"], match["host"], match["port"]):
                problems.append(
                    f"{name}: a password in {match['scheme']}://{match['user']}:…@{match['host']}"
                )
        for secret in secrets:
            if secret in content:
                problems.append(f"{name}: contains a password generated for the local stack")
    assert not problems, problems


def test_no_secret_was_ever_committed() -> None:
    """The history too: a secret removed in a later commit is still a leaked secret."""
    revisions = subprocess.run(
        ["git", "rev-list", "--all"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert revisions
    patterns = [p.pattern for p in SECRET_PATTERNS.values()]
    found = []
    for pattern in patterns:
        result = subprocess.run(
            ["git", "grep", "-I", "-l", "-P", pattern, *revisions],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        found += [line for line in result.stdout.splitlines() if line]
    for secret in local_stack_secrets():
        result = subprocess.run(
            ["git", "grep", "-I", "-l", "-F", secret, *revisions],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        found += [f"{line} (a local stack password)" for line in result.stdout.splitlines()]
    assert not found, found[:20]


def test_env_files_and_stack_data_are_never_tracked() -> None:
    tracked = {p.relative_to(REPO).as_posix() for p in tracked_files()}
    assert not any(
        name == ".env" or name.endswith("/.env") or name.startswith(".stack/") for name in tracked
    )
    for candidate in (".env", ".stack/secrets.env", ".env.production"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", candidate], cwd=REPO, check=False
        ).returncode
        assert ignored == 0 or candidate == ".env.production", f"{candidate} is not git-ignored"


# --------------------------------------------------------------------------- placeholders


def placeholder_env(pipeline: Pipeline, password: str | None) -> dict[str, str]:
    """The pipeline's real broker and topics, a production flag and a placeholder password."""
    env = {**pipeline.env, "FOODPIPE_ENV": "production"}
    if password is None:
        del env["DATABASE_URL"]  # built from POSTGRES_*, whose default is the placeholder
    else:
        url = make_url(env["DATABASE_URL"]).set(password=password)
        env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    return env


@pytest.mark.parametrize("placeholder", [*sorted(PLACEHOLDER_PASSWORDS), None])
def test_production_consumer_refuses_a_placeholder_password_in_one_line(
    pipeline: Pipeline, placeholder: str | None
) -> None:
    result = run_foodpipe(["consume", "--wait", "10"], placeholder_env(pipeline, placeholder))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "placeholder" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert pipeline.row_count() == 0


def test_the_producer_needs_no_database_password_even_in_production(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    env = {**placeholder_env(pipeline, None), "PRODUCER_STATE_DIR": str(tmp_path)}
    result = run_foodpipe(["produce", "--count", "5", "--rate", "0"], env)
    assert result.returncode == 0, result


def test_development_mode_accepts_the_placeholder(pipeline: Pipeline) -> None:
    env = {**placeholder_env(pipeline, "change-me"), "FOODPIPE_ENV": "development"}
    assert run_foodpipe(["config", "--check"], env, timeout=60).returncode == 0


# --------------------------------------------------------------------------- least privilege


def psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True)
    if not candidates:
        pytest.fail("psql is needed to apply src/database/app_role.sql (it uses \\gexec)")
    return str(candidates[0])


@pytest.fixture
def product_role(pipeline: Pipeline) -> Iterator[tuple[str, str, str]]:
    """A role made by the product's own app_role.sql in the test's database.

    Returns (role, password, URL). The password has URL-special characters on purpose.
    """
    role = f"fp_app_{uuid.uuid4().hex[:8]}"
    password = f"p@ss:w/rd%{uuid.uuid4().hex}"
    admin = make_url(pipeline.db_admin_url)
    result = subprocess.run(
        [
            psql_binary(),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(admin.host),
            "-p",
            str(admin.port),
            "-U",
            str(admin.username),
            "-d",
            str(admin.database),
            "-v",
            f"app_user={role}",
            "-v",
            f"app_password={password}",
            "-f",
            str(REPO / "src" / "database" / "app_role.sql"),
        ],
        env={**os.environ, "PGPASSWORD": str(admin.password)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    url = admin.set(username=role, password=password).render_as_string(hide_password=False)
    yield role, password, url
    with pipeline.admin_engine.connect() as conn:
        conn.execute(text(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER'))
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.commit()
    with pipeline.admin_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f'DROP ROLE "{role}"'))


FORBIDDEN = {
    "UPDATE": "UPDATE orders SET status = 'cancelled'",
    "DELETE": "DELETE FROM orders",
    "TRUNCATE": "TRUNCATE orders",
    "CREATE TABLE": "CREATE TABLE app_made (x int)",
    "CREATE in public": "CREATE VIEW app_view AS SELECT 1 AS x",
    "DROP TABLE": "DROP TABLE orders",
    "ALTER TABLE": "ALTER TABLE orders ADD COLUMN app_col int",
    "CREATE INDEX": "CREATE INDEX app_idx ON orders (status)",
    "CREATE SCHEMA": "CREATE SCHEMA app_schema",
    "COPY TO PROGRAM": "COPY orders TO PROGRAM 'true'",
}


def test_app_role_sql_grants_only_select_and_insert_on_orders(
    pipeline: Pipeline, product_role: tuple[str, str, str]
) -> None:
    role, _password, url = product_role
    engine = create_engine(url)
    try:
        order = valid_order(1)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO orders (order_id, customer_id, items, total_amount, status,"
                    " created_at) VALUES (:id, :c, '[]', 1, 'pending', now())"
                ),
                {"id": order.order_id, "c": order.customer_id},
            )
            assert conn.execute(text("SELECT count(*) FROM orders")).scalar_one() == 1
        refused = {}
        for label, statement in FORBIDDEN.items():
            with engine.connect() as conn:
                try:
                    conn.execute(text(statement))
                    conn.commit()
                    refused[label] = False
                except ProgrammingError as exc:
                    # 42501 insufficient_privilege, or 42xxx must-be-owner refusals.
                    refused[label] = getattr(exc.orig, "pgcode", "")[:2] == "42"
        assert all(refused.values()), f"allowed: {[k for k, v in refused.items() if not v]}"
        with engine.begin() as conn:
            # Without the grant option PostgreSQL only warns ("no privileges were
            # granted"); the check is that nothing was granted (below).
            conn.execute(text("GRANT SELECT, INSERT ON orders TO PUBLIC"))
        with engine.connect() as conn:
            attributes = conn.execute(
                text(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication"
                    " FROM pg_roles WHERE rolname = current_user"
                )
            ).one()
        assert not any(attributes), attributes
    finally:
        engine.dispose()
    with pipeline.admin_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar_one() == 1
        privileges = set(
            conn.execute(
                text(
                    "SELECT privilege_type FROM information_schema.role_table_grants"
                    " WHERE grantee = :r"
                ),
                {"r": role},
            ).scalars()
        )
    assert privileges == {"SELECT", "INSERT"}, privileges
    with pipeline.admin_engine.connect() as conn:
        public = conn.execute(
            text(
                "SELECT count(*) FROM information_schema.role_table_grants"
                " WHERE grantee = 'PUBLIC' AND table_name = 'orders'"
            )
        ).scalar_one()
    assert public == 0, "the app role passed its privileges on"


def test_app_role_sql_takes_back_what_postgresql_grants_to_public(
    pipeline: Pipeline, product_role: tuple[str, str, str]
) -> None:
    """PostgreSQL grants CONNECT and TEMPORARY on every database to PUBLIC by default."""
    _role, _password, url = product_role
    for other in ("postgres", "template1"):
        engine = create_engine(make_url(url).set(database=other))
        try:
            with pytest.raises(OperationalError, match="permission denied for database"):
                engine.connect().close()
        finally:
            engine.dispose()
    engine = create_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(ProgrammingError) as refused:
            conn.execute(text("CREATE TEMPORARY TABLE app_temp (x int)"))
        assert getattr(refused.value.orig, "pgcode", "") == "42501"
    finally:
        engine.dispose()


def test_the_local_stacks_app_role_is_least_privilege(stack: Stack) -> None:
    if stack.source != "local":
        pytest.skip(f"services come from {stack.source}; the app role is checked above")
    values = dict(line.split("=", 1) for line in stack.script("env").splitlines() if "=" in line)
    engine = create_engine(values["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            allowed = {
                privilege
                for privilege in (
                    "SELECT",
                    "INSERT",
                    "UPDATE",
                    "DELETE",
                    "TRUNCATE",
                    "REFERENCES",
                    "TRIGGER",
                )
                if conn.execute(
                    text("SELECT has_table_privilege('orders', :p)"), {"p": privilege}
                ).scalar_one()
            }
            can_create = conn.execute(
                text("SELECT has_schema_privilege('public', 'CREATE')")
            ).scalar_one()
    finally:
        engine.dispose()
    assert allowed == {"SELECT", "INSERT"}, allowed
    assert not can_create


# --------------------------------------------------------------------------- passwords in logs


def leaked(output: str, password: str) -> list[str]:
    forms = {password, quote(password, safe=""), quote(password)}
    return [form for form in forms if form and form in output]


def test_no_output_ever_contains_the_database_password(
    pipeline: Pipeline, product_role: tuple[str, str, str], log_dir: Path
) -> None:
    role, password, url = product_role
    env = {**pipeline.env, "DATABASE_URL": url, "LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"}
    outputs: dict[str, str] = {}

    # 1. A consumer at DEBUG that stores orders and dead-letters garbage.
    produce_records(
        pipeline.bootstrap,
        pipeline.topic,
        [record(valid_order(n)) for n in range(1, 51)] + [(b"CUST-00001", b"not json")],
    )
    log_path = log_dir / "consumer.log"
    with open(log_path, "wb") as out:
        from tests.support import foodpipe_argv, subprocess_env

        proc = subprocess.Popen(
            foodpipe_argv(["consume"]),
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_until(lambda: pipeline.row_count() == 50, timeout=60, message="50 rows")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    outputs["consume"] = log_path.read_text()
    # The URL was logged, masked: the check below is not vacuous.
    assert f"{role}:***@" in outputs["consume"], outputs["consume"][:2000]

    # 2. Read-only commands that print settings, health and status.
    for command in (["config"], ["health"], ["status"], ["audit"]):
        if command[0] in COMMANDS:
            result = run_foodpipe(command, env, timeout=120)
            outputs[" ".join(command)] = result.stdout + result.stderr

    # 3. The same password refused (wrong user's password), and the database unreachable.
    wrong = make_url(url).set(username="foodpipe_nobody").render_as_string(hide_password=False)
    result = run_foodpipe(["consume", "--wait", "5"], {**env, "DATABASE_URL": wrong}, timeout=60)
    assert result.returncode == 3, result
    outputs["consume, authentication refused"] = result.stdout + result.stderr
    down = make_url(url).set(port=1).render_as_string(hide_password=False)
    result = run_foodpipe(["consume", "--wait", "2"], {**env, "DATABASE_URL": down}, timeout=60)
    assert result.returncode == 3, result
    outputs["consume, database unreachable"] = result.stdout + result.stderr

    found = {name: leaked(text_out, password) for name, text_out in outputs.items()}
    assert not any(found.values()), {k: v for k, v in found.items() if v}


# --------------------------------------------------------------------------- hostile input


def hostile_messages(rng: random.Random) -> list[tuple[bytes | None, bytes | None]]:
    key = b"CUST-00001"
    deep = b'{"a":' * 20_000 + b"1" + b"}" * 20_000  # under 64 KB? no: 120 KB, oversize
    shallow_deep = b"[" * 15_000 + b"]" * 15_000  # 30 KB of nesting, within the limit
    base = json.loads(record(valid_order(70_000))[1])
    many_items = {
        **base,
        "items": [{"name": f"d{i}", "quantity": 1, "unit_price": "1.00"} for i in range(1200)],
        "total_amount": "1200.00",
    }
    huge_number = dict(base, total_amount="9" * 50_000)
    return [
        # Near the broker's 1 MB limit, incompressible: never parsed, dead-lettered.
        *[(key, rng.randbytes(900 * 1024)) for _ in range(30)],
        (key, deep),
        (key, shallow_deep),
        (key, json.dumps(many_items).encode()),
        (key, json.dumps(huge_number).encode()),
        (key, json.dumps(dict(base, order_id="ORD-20250110-" + "9" * 40_000)).encode()),
        (key, ("🍕" * 15_000).encode()),
        (key, b"\xf0\x28\x8c\x28" * 10_000),  # invalid 4-byte UTF-8 sequences
        (key, b'{"order_id": "' + b"\\u0000" * 8_000 + b'"}'),
        (rng.randbytes(10 * 1024), json.dumps(base).encode()),  # a 10 KB garbage key
        (key, b"1e99999999"),
        (key, b'"' + b"\\" * 40_000 + b'"'),
    ]


@pytest.mark.timeout(240)
def test_hostile_and_oversized_input_cannot_crash_the_consumer_or_bloat_it(
    make_pipeline: Callable[..., Pipeline], stack: Stack, log_dir: Path
) -> None:
    results: list[object] = []
    pipe = make_pipeline()
    f = Fault(
        case="sec",
        title="hostile input",
        pipeline=pipe,
        stack=stack,
        log_dir=log_dir,
        results=results,  # type: ignore[arg-type]
    )
    try:
        consumer = f.consume()
        f.wait_assigned(consumer)
        rng = random.Random(2024)
        for round_ in range(3):
            hostile = hostile_messages(rng)
            items: list[tuple[bytes | None, bytes | None, str | None]] = []
            for index, (key, value) in enumerate(hostile):
                items.append((*record(valid_order(round_ * 1000 + index + 1)), None))
                # Whatever class the consumer names: dead-lettered, not crashed, is the point.
                items.append((key, value, ANY_CLASS))
            f.inject(items)
        report = f.finish(stop=False)
        peak = consumer.hwm_kb()
        assert consumer.alive(), consumer.tail()
        assert peak is not None
        assert peak < CONTAINER_LIMIT_KB, f"consumer peaked at {peak} kB"
        code, _seconds = consumer.terminate()
        assert code == 0
        assert report.dlq_records >= report.invalid_sent
    finally:
        f.cleanup()
