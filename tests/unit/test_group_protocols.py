"""The consumer group protocol and static membership settings, without services.

- ``KAFKA_GROUP_PROTOCOL=classic`` keeps the cooperative-sticky assignor and the
  client-side session timeout; ``consumer`` (KIP-848) sends none of the settings
  librdkafka refuses in that protocol, and takes the session timeout to the group's
  broker-side configuration instead.
- A wrong value is refused in one line that names the setting and the fix.
- ``KAFKA_GROUP_INSTANCE_ID=auto`` gives each live process on a host its own id, and a
  process that died (even by SIGKILL) leaves its id to the next one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from foodpipe.kafka import consumer_config, group_config_resource
from foodpipe.membership import claim_instance_id
from foodpipe.settings import ConfigError, load_settings

#: What librdkafka 2.x refuses when group.protocol=consumer ("defined broker side").
CLASSIC_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")


def test_classic_keeps_cooperative_sticky_and_the_client_side_session() -> None:
    config = consumer_config(
        load_settings(_env_file=None, kafka_group_protocol="classic", kafka_session_timeout_ms=9000)
    )
    assert config["group.protocol"] == "classic"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["session.timeout.ms"] == 9000
    assert config["heartbeat.interval.ms"] == 1000
    assert "group.remote.assignor" not in config
    assert "group.instance.id" not in config


def test_consumer_protocol_sends_nothing_librdkafka_refuses_in_it() -> None:
    settings = load_settings(_env_file=None, kafka_group_protocol="consumer")
    config = consumer_config(settings)
    assert config["group.protocol"] == "consumer"
    assert not set(CLASSIC_ONLY) & set(config)
    # librdkafka accepts the configuration (it refuses the classic keys at creation).
    Consumer({k: v for k, v in config.items() if k != "logger"}).close()


@pytest.mark.parametrize("key", CLASSIC_ONLY)
def test_librdkafka_really_refuses_the_classic_keys_in_the_consumer_protocol(key: str) -> None:
    """Why consumer_config leaves them out: this client version says no at creation."""
    value: Any = "cooperative-sticky" if key == "partition.assignment.strategy" else 10_000
    with pytest.raises(Exception, match=key):
        Consumer({"group.id": "g", "group.protocol": "consumer", key: value})


def test_the_remote_assignor_reaches_librdkafka_with_the_consumer_protocol() -> None:
    settings = load_settings(
        _env_file=None, kafka_group_protocol="consumer", kafka_group_remote_assignor="range"
    )
    assert consumer_config(settings)["group.remote.assignor"] == "range"


def test_the_group_gets_the_same_session_timeout_in_the_consumer_protocol() -> None:
    settings = load_settings(
        _env_file=None, kafka_group_protocol="consumer", kafka_session_timeout_ms=10_000
    )
    resource = group_config_resource(settings)
    assert resource.name == settings.kafka_consumer_group
    values = {entry.name: entry.value for entry in resource.incremental_configs}
    assert values == {
        "consumer.session.timeout.ms": "10000",
        "consumer.heartbeat.interval.ms": "1000",
    }


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"kafka_group_protocol": "kip848"}, ("KAFKA_GROUP_PROTOCOL", "classic", "consumer")),
        ({"kafka_group_remote_assignor": "sticky"}, ("KAFKA_GROUP_REMOTE_ASSIGNOR", "uniform")),
        (
            {"kafka_group_protocol": "classic", "kafka_group_remote_assignor": "range"},
            ("KAFKA_GROUP_REMOTE_ASSIGNOR=range", "KAFKA_GROUP_PROTOCOL=consumer"),
        ),
        ({"kafka_group_instance_id": "two words"}, ("KAFKA_GROUP_INSTANCE_ID", "empty")),
        ({"kafka_group_instance_id": "x" * 201}, ("KAFKA_GROUP_INSTANCE_ID", "auto")),
    ],
)
def test_wrong_values_are_refused_in_one_line_naming_the_setting(
    values: dict[str, Any], names: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **values)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_instance_id_is_dynamic_membership(value: str, tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, kafka_group_instance_id=value)
    assert settings.kafka_group_instance_id is None
    assert claim_instance_id(settings, tmp_path).value is None


def test_a_given_instance_id_is_used_as_it_is(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, kafka_group_instance_id="consumer-a")
    assert claim_instance_id(settings, tmp_path).value == "consumer-a"


def test_auto_gives_each_live_process_its_own_id_and_reuses_a_released_one(
    tmp_path: Path,
) -> None:
    settings = load_settings(_env_file=None, kafka_group_instance_id="auto")
    host = socket.gethostname().split(".")[0]
    first = claim_instance_id(settings, tmp_path)
    second = claim_instance_id(settings, tmp_path)
    assert (first.value, second.value) == (f"{host}-0", f"{host}-1")
    first.release()
    # The slot of a member that stopped goes to the next one: a restart keeps its id.
    assert claim_instance_id(settings, tmp_path).value == f"{host}-0"
    second.release()


def test_auto_slot_of_a_sigkilled_process_is_free_again(tmp_path: Path) -> None:
    """The kernel drops an flock with its process, whatever killed it."""
    code = (
        "import sys, time; from pathlib import Path;"
        "from foodpipe.settings import load_settings;"
        "from foodpipe.membership import claim_instance_id;"
        "held = claim_instance_id(load_settings(_env_file=None,"
        " kafka_group_instance_id='auto'), Path(sys.argv[1]));"
        "print(held.value, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        taken = child.stdout.readline().strip()
        settings = load_settings(_env_file=None, kafka_group_instance_id="auto")
        other = claim_instance_id(settings, tmp_path)
        assert other.value != taken  # held by the live child
        other.release()
    finally:
        child.kill()
        child.wait(10)
    assert claim_instance_id(settings, tmp_path).value == taken


def test_different_groups_do_not_share_slots(tmp_path: Path) -> None:
    one = load_settings(_env_file=None, kafka_group_instance_id="auto", kafka_consumer_group="a")
    two = load_settings(_env_file=None, kafka_group_instance_id="auto", kafka_consumer_group="b")
    held = claim_instance_id(one, tmp_path)
    assert claim_instance_id(two, tmp_path).value == held.value
