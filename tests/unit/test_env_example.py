""".env.example documents every setting, and nothing else, with safe placeholders.

Both directions: every Settings field has a line (set, or ``# NAME=default``); every line
is a Settings field or a variable one of the Compose files interpolates. The defaults it
shows are the real defaults, and its secrets are placeholders that production refuses.
"""

from __future__ import annotations

import re

import pytest

from foodpipe.settings import PLACEHOLDER_PASSWORDS, ConfigError, Settings, load_settings

from ..compose_support import COMPOSE_FILES, interpolation_names, read_env_file

SETTINGS_VARS = {name.upper(): name for name in Settings.model_fields}


def compose_vars() -> set[str]:
    return set().union(*(interpolation_names(path.read_text()) for path in COMPOSE_FILES.values()))


def test_every_setting_is_documented() -> None:
    missing = set(SETTINGS_VARS) - set(read_env_file().documented)
    assert not missing, f"add these to .env.example: {sorted(missing)}"


def test_every_documented_variable_is_read_by_something() -> None:
    unknown = set(read_env_file().documented) - set(SETTINGS_VARS) - compose_vars()
    assert not unknown, f".env.example documents variables nothing reads: {sorted(unknown)}"


def test_every_compose_variable_is_documented() -> None:
    missing = compose_vars() - set(read_env_file().documented)
    assert not missing, f"the Compose files read undocumented variables: {sorted(missing)}"


def test_every_variable_has_an_explanation() -> None:
    """Each NAME= line sits in a paragraph that a prose comment opens."""
    explained = False
    for line in read_env_file().lines:
        stripped = line.strip()
        variable = re.match(r"^(?:#\s?)?([A-Z][A-Z0-9_]*)=", stripped)
        if not stripped:
            explained = False
        elif variable:
            assert explained, f"{variable.group(1)} has no comment explaining it"
        elif stripped.startswith("#") and stripped.strip("# -"):
            explained = True


def test_the_shown_defaults_are_the_real_defaults() -> None:
    documented = read_env_file().documented
    active = read_env_file().active
    defaults = Settings.model_construct()
    for var, field in SETTINGS_VARS.items():
        if var in active or Settings.model_fields[field].default is None:
            continue  # a value to fill in, or an example of an optional URL
        parsed = load_settings(_env_file=None, **{field: documented[var]})
        assert getattr(parsed, field) == getattr(defaults, field), (
            f".env.example shows {var}={documented[var]}, but the default is "
            f"{getattr(defaults, field)!r}"
        )


def test_the_example_values_are_valid_settings() -> None:
    documented = read_env_file().documented
    values = {
        SETTINGS_VARS[var]: value for var, value in documented.items() if var in SETTINGS_VARS
    }
    settings = load_settings(_env_file=None, **values)
    assert settings.kafka_topic_partitions == 3


def test_secrets_are_placeholders_that_production_refuses() -> None:
    documented = read_env_file().documented
    for var, value in documented.items():
        if var.endswith("PASSWORD_FILE"):
            # A path, not a password: the files live in the git-ignored .secrets/.
            assert value.startswith("./.secrets/"), f"{var} must name a file in .secrets/"
        elif "PASSWORD" in var:
            assert value in PLACEHOLDER_PASSWORDS, f"{var} must be a placeholder, not {value!r}"
        if var.endswith("_URL"):
            password = value.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
            assert password in PLACEHOLDER_PASSWORDS, var
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(
            _env_file=None,
            foodpipe_env="production",
            postgres_password=documented["POSTGRES_PASSWORD"],
        ).check_database_password()


def test_the_secrets_compose_requires_are_set() -> None:
    """A plain copy of the example satisfies every ${VAR:?} of the Compose files."""
    active = read_env_file().active
    for path in COMPOSE_FILES.values():
        text = path.read_text()
        for var in interpolation_names(text):
            if f"${{{var}:?" in text:
                assert var in active, f"{path.name} requires {var}; set it in .env.example"
