#!/usr/bin/env bash
# Install what foodpipe needs on a fresh Debian/Ubuntu machine, idempotently:
#   - system packages: Java 17+ and Maven (the Kafka broker), PostgreSQL server binaries,
#     openssl (the secured stack's certificates), prometheus (promtool and the server,
#     which the alert-rule tests run themselves; where systemd runs, Debian's package
#     also enables a prometheus service on :9090: `systemctl disable --now prometheus`),
#     chromium and chromium-driver (the dashboard's browser test);
#   - a virtualenv in .venv with the hash-pinned requirements (requirements-dev.lock) and
#     foodpipe itself (editable).
# Safe to run again: it only installs what is missing.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf 'bootstrap: %s\n' "$*" >&2; }

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
{ command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; } \
  || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v openssl >/dev/null || missing+=(openssl) # certificates of the secured stack (local_stack.sh)
command -v promtool >/dev/null || missing+=(prometheus) # promtool checks the alert rules; the tests run prometheus
# The dashboard's browser test drives Debian's chromium (Playwright never downloads a
# browser here); chromium-driver is there for Selenium.
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)

if ((${#missing[@]})); then
  SUDO=()
  ((EUID == 0)) || SUDO=(sudo)
  command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get; install them by hand"; exit 1; }
  say "installing system packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { say "Python 3.11+ is required (found $(python3 -V 2>&1))"; exit 1; }

stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt requirements-dev.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  say "installing Python dependencies into .venv"
  python3 -m venv .venv
  # Every file is checked against the sha256 locked in requirements-dev.lock (pip itself
  # and the build backend included): a tampered or swapped download is refused.
  .venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock
  # foodpipe itself: no dependency left to fetch, and the locked setuptools builds it.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" >"$stamp"
fi
say "ready: $(.venv/bin/foodpipe --version), $(java -version 2>&1 | head -1)"
