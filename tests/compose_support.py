"""Read the Compose files, .env.example and the Dockerfile the way the tools do, without
a Docker engine.

- ``interpolate`` implements Compose's variable syntax (``${VAR}``, ``${VAR:-default}``,
  ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``, ``$$``), so a test sees
  the values a container would get.
- ``read_env_file`` reads .env.example: ``NAME=value`` lines are set, ``# NAME=value``
  lines document a default.
- ``dockerfile_instructions`` splits a Dockerfile into (instruction, arguments) pairs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .support import REPO

COMPOSE_FILES = {
    "local": REPO / "docker-compose.yml",
    "aws": REPO / "docker-compose.aws.yml",
}
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
FOODPIPE_IMAGE = "foodpipe:local"

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (Compose refuses to start)."""


def interpolate(value: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env
        usable = present and (env[name] != "" or op in ("-", "?"))
        if op in (":-", "-"):
            return env[name] if usable else arg
        if op in (":?", "?"):
            if not usable:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(replace, value)


def interpolation_names(text: str) -> set[str]:
    """Every variable a Compose file interpolates (``$$`` escapes excluded)."""
    return {
        match.group("braced") or match.group("plain")
        for match in _VAR.finditer(text)
        if not match.group("escaped")
    }


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


def load_compose(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The parsed Compose file; interpolated with ``env`` when given (YAML anchors and
    merge keys are resolved by the YAML loader, as Compose does)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILES[name].read_text())
    return _walk(data, env) if env is not None else data


@dataclass(frozen=True)
class EnvFile:
    active: dict[str, str]  # NAME=value
    documented: dict[str, str]  # NAME=value and "# NAME=value"
    lines: list[str]


_ENV_LINE = re.compile(r"^(?P<comment>#\s?)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def read_env_file(path: Path = ENV_EXAMPLE) -> EnvFile:
    active: dict[str, str] = {}
    documented: dict[str, str] = {}
    lines = path.read_text().splitlines()
    for line in lines:
        match = _ENV_LINE.match(line)
        if not match:
            continue
        name, value = match.group("name"), match.group("value")
        if name in documented:
            raise AssertionError(f"{path.name}: {name} appears twice")
        documented[name] = value
        if not match.group("comment"):
            active[name] = value
    return EnvFile(active, documented, lines)


def example_env() -> dict[str, str]:
    """What Compose interpolates with when .env is a plain copy of .env.example."""
    return dict(read_env_file().active)


def foodpipe_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the foodpipe image (the ones Settings configures)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == FOODPIPE_IMAGE
    }


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}
    return {key: "" if value is None else str(value) for key, value in environment.items()}


_SIZE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[bkmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_bytes(value: str | int) -> int:
    """Docker's byte strings: ``128m``, ``1g``, ``512MB`` (binary units, as Docker uses)."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group("number")) * _UNITS[match.group("unit").lower()])


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def dockerignore_excludes(relative_path: str, patterns: list[str] | None = None) -> bool:
    """Whether Docker leaves ``relative_path`` out of the build context.

    Docker's rules: patterns apply in order and the last one matching decides; a pattern
    matches a path or any of its parent directories; ``!`` re-includes; ``*`` stays
    within one path segment and ``**`` spans any number of them.
    """
    if patterns is None:
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    parts = relative_path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = _glob_to_regex(body.strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)
