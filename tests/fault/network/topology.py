"""The network-fault topology: foodpipe's own Compose file, grown to three brokers.

Every service is its own host on the project's user-defined network, with its own
address, so a link between two of them can be cut or degraded without touching the
others (over loopback, as in the rest of the fault suite, it cannot):

- ``kafka``, ``kafka2``, ``kafka3``: one KRaft cluster, each node broker and controller
  (three voters), replication factor 3 and ``min.insync.replicas=2``. They are the
  product's ``kafka`` service with only the settings a cluster changes (node id, voters,
  replication), generated from ``docker-compose.yml`` so the two never drift;
- ``postgres`` and ``db-init``, as in the product;
- ``toxiproxy`` between the clients and every server: each broker advertises a
  ``CLIENT`` listener at ``toxiproxy:1909N``, which Toxiproxy forwards to that broker,
  and PostgreSQL is reached at ``toxiproxy:15432``. A client therefore reaches a broker
  only through the proxy, also after the first metadata answer, and latency and jitter
  (which this kernel's missing ``netem`` cannot give) are Toxiproxy "toxics";
- ``producer`` and two ``consumer`` replicas (``--scale consumer=2``), the product's
  services, restarted per case with the case's own topic, DLQ topic and group.

Cuts and packet loss are iptables rules in a container's own network namespace, entered
from the host with ``nsenter`` (the containers keep no capability): rules in two chains
of their own, so healing a link is flushing them. The brokers' ``HOST`` listeners and
PostgreSQL are published on 127.0.0.1 for the test's own checks, which therefore never
go through the faults they observe.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.docker.harness import Checkout, inspect, run, wait_healthy
from tests.support import free_port, wait_until

BROKERS = ("kafka", "kafka2", "kafka3")
#: The proxy's port for each broker's CLIENT listener, and for PostgreSQL.
PROXY_PORTS = {"kafka": 19091, "kafka2": 19092, "kafka3": 19093, "postgres": 15432}
KAFKA_PROXY_PORTS = "19091:19093"
CLIENT_LISTENER_PORT = 9095
OVERRIDE = "docker-compose.network-faults.yml"
PROXIES_FILE = "toxiproxy.json"
#: A generous log size: the acknowledged set is read from the producer's DEBUG lines.
BIG_LOGS = {"driver": "json-file", "options": {"max-size": "500m", "max-file": "1"}}


def _port_var(broker: str) -> str:
    return "KAFKA_HOST_PORT" if broker == "kafka" else f"{broker.upper()}_HOST_PORT"


def cluster_override(product: Mapping[str, Any]) -> dict[str, Any]:
    """The Compose override that turns the product's one broker into three, with the
    proxy in front of every client connection."""
    base_kafka = product["services"]["kafka"]
    voters = ",".join(f"{n}@{name}:9093" for n, name in enumerate(BROKERS, start=1))
    services: dict[str, Any] = {}
    for node_id, name in enumerate(BROKERS, start=1):
        port_var = _port_var(name)
        environment = {
            "KAFKA_NODE_ID": str(node_id),
            "KAFKA_CONTROLLER_QUORUM_VOTERS": voters,
            "KAFKA_LISTENERS": (
                f"INTERNAL://:9092,CONTROLLER://:9093,HOST://:9094,CLIENT://:{CLIENT_LISTENER_PORT}"
            ),
            "KAFKA_ADVERTISED_LISTENERS": (
                f"INTERNAL://{name}:9092,HOST://127.0.0.1:${{{port_var}}},"
                f"CLIENT://toxiproxy:{PROXY_PORTS[name]}"
            ),
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
                "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,HOST:PLAINTEXT,CLIENT:PLAINTEXT"
            ),
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "2",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "2",
        }
        if name == "kafka":
            # Compose merges an override's environment and ports into the service.
            services[name] = {"environment": environment}
            continue
        node = copy.deepcopy(base_kafka)
        node["hostname"] = name
        node["environment"] = {**node["environment"], **environment}
        node["volumes"] = [f"{name}-data:/var/lib/kafka/data"]
        node["ports"] = [f"127.0.0.1:${{{port_var}}}:9094"]
        services[name] = node
    client_env = {
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(f"toxiproxy:{PROXY_PORTS[name]}" for name in BROKERS),
        "LOG_FORMAT": "json",
    }
    services["toxiproxy"] = {
        "image": "${TOXIPROXY_IMAGE:-ghcr.io/shopify/toxiproxy:2.5.0}",
        "command": ["-host=0.0.0.0", f"-config=/config/{PROXIES_FILE}"],
        "volumes": [f"./{PROXIES_FILE}:/config/{PROXIES_FILE}:ro"],
        "ports": ["127.0.0.1:${TOXIPROXY_HOST_PORT}:8474"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "mem_limit": "64m",
    }
    services["producer"] = {
        "environment": {**client_env, "LOG_LEVEL": "DEBUG"},
        "logging": BIG_LOGS,
    }
    services["consumer"] = {
        "environment": {
            **client_env,
            "LOG_LEVEL": "INFO",
            "POSTGRES_HOST": "toxiproxy",
            "POSTGRES_PORT": str(PROXY_PORTS["postgres"]),
        },
        "logging": BIG_LOGS,
    }
    return {
        "version": product.get("version", "2.4"),
        "services": services,
        "volumes": {f"{name}-data": {} for name in BROKERS[1:]},
    }


def proxies() -> list[dict[str, Any]]:
    """Toxiproxy's start-up configuration: one proxy per broker, one for PostgreSQL."""
    return [
        {
            "name": name,
            "listen": f"0.0.0.0:{port}",
            "upstream": f"{name}:{CLIENT_LISTENER_PORT if name in BROKERS else 5432}",
            "enabled": True,
        }
        for name, port in PROXY_PORTS.items()
    ]


# --------------------------------------------------------------------------- link faults
IN_CHAIN, OUT_CHAIN = "FPFAULT-IN", "FPFAULT-OUT"


def _netns(cid: str) -> list[str]:
    pid = inspect(cid)["State"]["Pid"]
    assert pid, f"container {cid[:12]} is not running"
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


def _iptables(cid: str, *rules: list[str]) -> None:
    prefix = _netns(cid)
    for rule in rules:
        run([*prefix, "iptables", "-w", *rule])


def _ensure_chains(cid: str) -> None:
    prefix = _netns(cid)
    listed = run([*prefix, "iptables", "-w", "-S"]).stdout
    if f"-N {IN_CHAIN}" in listed:
        return
    _iptables(
        cid,
        ["-N", IN_CHAIN],
        ["-N", OUT_CHAIN],
        ["-I", "INPUT", "-j", IN_CHAIN],
        ["-I", "OUTPUT", "-j", OUT_CHAIN],
    )


def cut_ports(cid: str, ports: str) -> None:
    """Drop every TCP packet between ``cid`` and the proxy ports ``ports`` (e.g.
    "19091:19093"): the container's connections to those servers hang, as across a
    real partition (no reset, no refusal: a silent loss is the hard case)."""
    _ensure_chains(cid)
    _iptables(
        cid,
        ["-A", OUT_CHAIN, "-p", "tcp", "-m", "multiport", "--dports", ports, "-j", "DROP"],
        ["-A", IN_CHAIN, "-p", "tcp", "-m", "multiport", "--sports", ports, "-j", "DROP"],
    )


def isolate(cid: str) -> None:
    """Drop everything that enters or leaves ``cid`` except its loopback."""
    _ensure_chains(cid)
    _iptables(
        cid,
        ["-A", IN_CHAIN, "-i", "lo", "-j", "RETURN"],
        ["-A", IN_CHAIN, "-j", "DROP"],
        ["-A", OUT_CHAIN, "-o", "lo", "-j", "RETURN"],
        ["-A", OUT_CHAIN, "-j", "DROP"],
    )


def lossy(cid: str, ports: str, probability: float) -> None:
    """Drop each packet between ``cid`` and ``ports`` with ``probability``, both ways."""
    _ensure_chains(cid)
    chance = ["-m", "statistic", "--mode", "random", "--probability", f"{probability}"]
    _iptables(
        cid,
        ["-A", OUT_CHAIN, "-p", "tcp", "-m", "multiport", "--dports", ports, *chance, "-j", "DROP"],
        ["-A", IN_CHAIN, "-p", "tcp", "-m", "multiport", "--sports", ports, *chance, "-j", "DROP"],
    )


def heal(cid: str) -> None:
    """Remove every fault rule of ``cid`` (the chains stay, empty)."""
    _ensure_chains(cid)
    _iptables(cid, ["-F", IN_CHAIN], ["-F", OUT_CHAIN])


def dropped_packets(cid: str) -> int:
    """How many packets the fault rules of ``cid`` dropped since they were added."""
    out = run([*_netns(cid), "iptables", "-w", "-L", OUT_CHAIN, "-v", "-x", "-n"]).stdout
    out += run([*_netns(cid), "iptables", "-w", "-L", IN_CHAIN, "-v", "-x", "-n"]).stdout
    total = 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP" and fields[0].isdigit():
            total += int(fields[0])
    return total


# --------------------------------------------------------------------------- the stack
@dataclass
class Topology:
    checkout: Checkout
    ports: dict[str, int] = field(default_factory=dict)

    # -------------------------------------------------------------- start and stop
    def write_files(self) -> None:
        product = yaml.safe_load((self.checkout.root / "docker-compose.yml").read_text())
        override = cluster_override(product)
        (self.checkout.root / OVERRIDE).write_text(yaml.safe_dump(override, sort_keys=False))
        (self.checkout.root / PROXIES_FILE).write_text(json.dumps(proxies(), indent=1))
        self.checkout.extra_files = (OVERRIDE,)
        for broker in BROKERS[1:]:
            self.ports[_port_var(broker)] = free_port()
        self.ports["TOXIPROXY_HOST_PORT"] = free_port()
        dotenv = self.checkout.dotenv()
        self.ports["KAFKA_HOST_PORT"] = int(dotenv["KAFKA_HOST_PORT"])
        self.ports["POSTGRES_HOST_PORT"] = int(dotenv["POSTGRES_HOST_PORT"])
        with (self.checkout.root / ".env").open("a") as env_file:
            for name in (*(_port_var(b) for b in BROKERS[1:]), "TOXIPROXY_HOST_PORT"):
                env_file.write(f"{name}={self.ports[name]}\n")

    def start(self, timeout: float = 300) -> float:
        """Servers up and healthy, db-init done, the proxy answering; returns seconds."""
        started = time.monotonic()
        self.checkout.compose("up", "-d", *BROKERS, "postgres", "db-init", "toxiproxy")
        wait_healthy(self.checkout, [*BROKERS, "postgres"], ["db-init"], timeout=timeout)
        wait_until(self._proxy_answers, timeout=60, message="Toxiproxy's API")
        return time.monotonic() - started

    def _proxy_answers(self) -> bool:
        try:
            return len(self.toxiproxy("GET", "/proxies")) == len(PROXY_PORTS)
        except OSError:
            return False

    # -------------------------------------------------------------- addresses
    @property
    def host_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.ports[_port_var(b)]}" for b in BROKERS)

    @property
    def admin_url(self) -> str:
        dotenv = self.checkout.dotenv()
        user = dotenv.get("POSTGRES_ADMIN_USER", "foodpipe_admin")
        return (
            f"postgresql+psycopg2://{user}:{self.checkout.secret('postgres_admin_password')}"
            f"@127.0.0.1:{self.ports['POSTGRES_HOST_PORT']}/{dotenv.get('POSTGRES_DB', 'foodpipe')}"
        )

    def container(self, service: str, index: int = 1) -> str:
        """The running container ``<project>_<service>_<index>``."""
        for cid in self.checkout.container_ids(service):
            labels = inspect(cid)["Config"]["Labels"]
            if labels.get("com.docker.compose.container-number") == str(index):
                return cid
        raise AssertionError(f"no container {service} #{index} in {self.checkout.project}")

    def broker_of_node(self, node_id: int) -> str:
        return BROKERS[node_id - 1]

    # -------------------------------------------------------------- Toxiproxy
    def toxiproxy(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['TOXIPROXY_HOST_PORT']}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        # Always http://127.0.0.1:<published API port>: no scheme comes from outside.
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            raw = response.read()
        return json.loads(raw) if raw else None

    def add_latency(self, proxies_: Iterable[str], latency_ms: int, jitter_ms: int) -> None:
        """``latency_ms`` ± ``jitter_ms`` on every byte the servers send back."""
        for proxy in proxies_:
            self.toxiproxy(
                "POST",
                f"/proxies/{proxy}/toxics",
                {
                    "name": "latency",
                    "type": "latency",
                    "stream": "downstream",
                    "toxicity": 1.0,
                    "attributes": {"latency": latency_ms, "jitter": jitter_ms},
                },
            )

    def clear_toxics(self, proxies_: Iterable[str]) -> None:
        for proxy in proxies_:
            for toxic in self.toxiproxy("GET", f"/proxies/{proxy}/toxics"):
                self.toxiproxy("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")
