"""Network faults between hosts (issue "Real network faults across hosts").

Each case runs on the session's topology (topology.py): three KRaft brokers, PostgreSQL,
Toxiproxy, the product's producer and two consumer replicas, each its own container.
Each ends with the fault suite's invariant check (acknowledged ids == rows, no duplicate
row, the DLQ exactly the poison sent, lag 0, committed offsets never moving backwards)
and ``foodpipe audit``, and reports its recovery time: from the end of the fault until
the group committed everything that was on the log at that moment.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tests.docker.harness import run
from tests.fault.harness import group_members
from tests.fault.network.cases import ContainerService, NetworkCase, owned
from tests.fault.network.topology import (
    BROKERS,
    KAFKA_PROXY_PORTS,
    PROXY_PORTS,
    Topology,
    cut_ports,
    dropped_packets,
    heal,
    isolate,
    lossy,
)
from tests.support import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

NetCase = Callable[[str, str], NetworkCase]
#: The Compose files' session timeout (KAFKA_SESSION_TIMEOUT_MS).
SESSION_S = 10.0
PG_PORT = str(PROXY_PORTS["postgres"])
ALL_CLIENT_PORTS = f"{KAFKA_PROXY_PORTS},{PG_PORT}"


# --------------------------------------------------------------------------- helpers
def partition_state(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int]]]:
    """(leader, ISR) per partition, from the brokers that answer."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    metadata = admin.list_topics(topic, timeout=10)
    return {p.id: (p.leader, sorted(p.isrs)) for p in metadata.topics[topic].partitions.values()}


def quorum_leader(topology: Topology, ask: str) -> int:
    """The active controller's node id, asked of broker ``ask`` with Kafka's own tool."""
    out = run(
        [
            "docker",
            "exec",
            "-e",
            "KAFKA_HEAP_OPTS=-Xmx64m",
            topology.container(ask),
            "/opt/kafka/bin/kafka-metadata-quorum.sh",
            "--bootstrap-server",
            "localhost:9092",
            "describe",
            "--status",
        ],
        timeout=120,
    ).stdout
    for line in out.splitlines():
        if line.startswith("LeaderId:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no LeaderId in kafka-metadata-quorum's answer:\n{out}")


def wall(ts: str) -> float:
    """A log line's ``ts`` as seconds since the epoch (containers share the host clock)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def longest_silence(producer: ContainerService, partitions: set[int], since: float) -> float:
    """The longest time without a delivery report on any of ``partitions`` after ``since``."""
    longest = 0.0
    for partition in partitions:
        times = sorted(
            wall(e["ts"])
            for e in producer.events("order delivered")
            if int(e["partition"]) == partition and wall(e["ts"]) >= since
        )
        edges = [since, *times]
        longest = max(longest, *(b - a for a, b in itertools.pairwise(edges)))
    return longest


def assert_no_restarts(case: NetworkCase) -> None:
    restarted = [
        s.role
        for s in [*case.producers, *case.consumers]
        if isinstance(s, ContainerService) and s.restarts()
    ]
    assert not restarted, f"restarted during the case (a crash loop?): {restarted}"


# --------------------------------------------------------------------------- cases
@pytest.mark.timeout(600)
def test_case1_consumer_cut_off_from_every_broker_with_a_batch_in_flight(
    net_case: NetCase,
) -> None:
    case = net_case("1", "consumer cut off from all brokers > session timeout, batch in flight")
    case.begin(first_poison=81000)
    victim, other = case.consumer(1), case.consumer(2)
    mine = owned(victim)
    assert mine, f"consumer 1 owns nothing:\n{victim.tail()}"

    case.fault_starts()
    # A batch in flight: PostgreSQL stops answering consumer 1 first, so its next write
    # hangs until libpq gives up on the connection; the consumer keeps that batch and
    # retries it (its log says so), holding partitions whose offsets it cannot commit.
    cut_ports(victim.cid, PG_PORT)
    wait_until(
        lambda: victim.events_starting("database write failed"),
        timeout=60,
        interval=0.5,
        message=lambda: f"consumer 1's write to hang and fail:\n{victim.tail()}",
    )

    lost_before = len(victim.events_starting("partitions lost"))
    cut_ports(victim.cid, KAFKA_PROXY_PORTS)
    cut_at = time.monotonic()
    takeover = wait_until(
        lambda: mine <= owned(other) and time.monotonic() - cut_at,
        timeout=90,
        interval=0.5,
        message=lambda: f"consumer 2 to take over {mine}:\n{other.tail()}",
    )
    assert takeover >= SESSION_S * 0.8, f"partitions moved after {takeover:.1f}s"
    # Longer than the session timeout, and then some: the group has moved on.
    case.hold(max(0.0, SESSION_S * 2 - (time.monotonic() - cut_at)))
    heal(victim.cid)
    case.cleared()
    # librdkafka may notice the lost session on its own before the heal (no heartbeat
    # answer for session.timeout.ms) or learn it from the coordinator after: either way
    # it drops what it held unwritten, and a commit for the old generation is refused
    # ("Unknown member"). Then it rejoins as a new member.
    wait_until(
        lambda: (
            len(victim.events_starting("partitions lost")) > lost_before or victim.restarts() > 0
        ),
        timeout=90,
        interval=0.5,
        message=lambda: f"consumer 1 to learn it lost its partitions:\n{victim.tail()}",
    )
    wait_until(
        lambda: owned(victim) and victim.alive(),
        timeout=120,
        interval=0.5,
        message=lambda: f"consumer 1 to rejoin and own partitions again:\n{victim.tail()}",
    )
    case.wait_recovered(timeout=180)
    refused = [
        e for e in victim.events_starting("offset commit failed") if "member" in str(e.get("error"))
    ]
    case.notes.append(
        f"partitions {sorted(mine)} moved to consumer 2 {takeover:.1f} s after the cut"
        f" (session timeout {SESSION_S:.0f} s); consumer 1 back with"
        f" {sorted(owned(victim))} after the heal, restarts {victim.restarts()};"
        f" {len(refused)} stale commit(s) refused by the coordinator"
        f" ({refused[0]['error'] if refused else 'none sent'})"
    )
    case.conclude(extra={"takeover_s": round(takeover, 1)})


@pytest.mark.timeout(600)
def test_case2_consumer_cut_off_from_postgresql_only(net_case: NetCase) -> None:
    case = net_case("2", "consumer cut off from PostgreSQL only, 30 s")
    case.begin(first_poison=82000)
    victim = case.consumer(2)
    mine = owned(victim)
    members_before = len(group_members(case.bootstrap, case.pipeline.group))
    assert members_before == 2
    case.fault_starts()
    cut_ports(victim.cid, PG_PORT)
    seen_members: set[int] = set()

    def still_a_member() -> None:
        assert victim.alive(), f"consumer 2 exited:\n{victim.tail()}"
        seen_members.add(len(group_members(case.bootstrap, case.pipeline.group)))

    case.hold(30, check=still_a_member)
    dropped = dropped_packets(victim.cid)
    heal(victim.cid)
    case.cleared()
    case.wait_recovered(timeout=180)
    assert_no_restarts(case)
    case.notes.append(
        f"consumer 2 kept {sorted(mine)} and its membership (group sizes seen: "
        f"{sorted(seen_members)}), no restart; {dropped} packets dropped by the cut"
    )
    case.conclude()


@pytest.mark.timeout(600)
def test_case3_the_leaders_broker_isolated(net_case: NetCase, topology: Topology) -> None:
    case = net_case("3", "partition leader's broker isolated from brokers and clients, 30 s")
    admin = AdminClient({"bootstrap.servers": case.bootstrap})
    resource = ConfigResource("topic", case.pipeline.topic)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["min.insync.replicas"].value == "2"
    case.begin(first_poison=83000)

    def topic_state() -> dict[int, tuple[int, list[int]]]:
        return partition_state(case.bootstrap, case.pipeline.topic)

    before = topic_state()
    old_leader = before[0][0]
    assert before[0][1] == [1, 2, 3], before
    broker = topology.container(topology.broker_of_node(old_leader))
    case.fault_starts()
    isolate(broker)
    cut_at = time.monotonic()
    cut_wall = time.time()
    acked_at_cut = case.acked_count()

    def moved() -> Any:
        state = topic_state()
        return state if state[0][0] not in (old_leader, -1) else None

    during = wait_until(moved, timeout=60, interval=0.5, message="partition 0's leader to move")
    leader_moved = time.monotonic() - cut_at
    case.wait_acked(200, timeout=60)
    first_acks = time.monotonic() - cut_at
    # With one broker away every ISR is the two others: min.insync.replicas holds.
    assert all(len(isr) == 2 and old_leader not in isr for _, isr in during.values()), during
    case.hold(max(0.0, 30 - (time.monotonic() - cut_at)))
    acked_during = case.acked_count() - acked_at_cut
    heal(broker)
    healed_at = time.monotonic()
    case.cleared()
    wait_until(
        lambda: all(isr == [1, 2, 3] for _, isr in topic_state().values()),
        timeout=120,
        interval=1,
        message="the ISR to grow back to 3",
    )
    isr_back = time.monotonic() - healed_at
    case.wait_recovered(timeout=180)
    # The producer too: the batches it had sent to the isolated leader wait for their
    # request timeout before they go to the new leader.
    healed_wall = time.time()
    wait_until(
        lambda: any(
            wall(e["ts"]) > healed_wall and e["in_flight"] < 1000
            for e in case.producer().events("progress")
        ),
        timeout=150,
        interval=1,
        message=lambda: f"the producer's in-flight orders to drain:\n{case.producer().tail(3)}",
    )
    led = {p for p, (leader, _) in before.items() if leader == old_leader}
    stall = longest_silence(case.producer(), led, since=cut_wall)
    case.notes.append(
        f"node {old_leader} isolated: partition 0's leader moved to node {during[0][0]} after"
        f" {leader_moved:.1f} s, ISRs {sorted({tuple(i) for _, i in during.values()})};"
        f" the producer had 200 more acks {first_acks:.1f} s after the cut and"
        f" {acked_during} during the 30 s; its partitions led by node {old_leader}"
        f" ({sorted(led)}) went {stall:.1f} s without an acknowledgment; ISR back to 3"
        f" {isr_back:.1f} s after the heal"
    )
    case.conclude(
        extra={"leader_moved_s": round(leader_moved, 1), "producer_stall_s": round(stall, 1)}
    )


@pytest.mark.timeout(600)
def test_case4_the_controller_quorum_loses_one_voter_then_two(
    net_case: NetCase, topology: Topology
) -> None:
    case = net_case("4", "controller quorum loses one voter, then two")
    case.begin(first_poison=84000)
    first = quorum_leader(topology, "kafka")
    first_cid = topology.container(topology.broker_of_node(first))
    case.fault_starts()
    isolate(first_cid)
    one_lost_at = time.monotonic()
    acked = case.acked_count()
    rows = case.rows()
    # Two voters of three are a majority: a new controller, new leaders, writes go on.
    survivor_names = [b for b in BROKERS if b != topology.broker_of_node(first)]
    second = wait_until(
        lambda: (leader := quorum_leader(topology, survivor_names[0])) != first and leader,
        timeout=60,
        interval=1,
        message="a new quorum leader",
    )
    case.wait_acked(200, timeout=90)
    one_lost_resumed = time.monotonic() - one_lost_at
    case.hold(max(0.0, 20 - (time.monotonic() - one_lost_at)))
    one_lost = (case.acked_count() - acked, case.rows() - rows)

    # A second voter away: one of three is no majority. No controller can be elected,
    # so no ISR can shrink and no leader can move.
    second_cid = topology.container(topology.broker_of_node(second))
    isolate(second_cid)
    acked, rows = case.acked_count(), case.rows()
    case.hold(20)
    two_lost = (case.acked_count() - acked, case.rows() - rows)
    heal(second_cid)
    quorum_back = time.monotonic()
    case.wait_acked(200, timeout=180)
    resumed = time.monotonic() - quorum_back
    heal(first_cid)
    case.cleared()
    case.wait_recovered(timeout=180)
    case.notes.append(
        f"one voter (node {first}, the quorum leader) away: node {second} leads the quorum,"
        f" acks resumed {one_lost_resumed:.1f} s after the cut, {one_lost[0]} acks and"
        f" {one_lost[1]} rows in its 20 s; two voters away (also node {second}):"
        f" {two_lost[0]} acks and {two_lost[1]} rows in 20 s; acks again {resumed:.1f} s after"
        " the second voter came back"
    )
    assert one_lost[0] > 0, "writes stopped with two voters of three still there"
    case.conclude(extra={"acks_one_voter_lost": one_lost[0], "acks_two_voters_lost": two_lost[0]})


@pytest.mark.timeout(900)
def test_case5_slow_lossy_links_for_two_minutes(net_case: NetCase, topology: Topology) -> None:
    case = net_case("5", "200 ± 50 ms delay and 2% loss on every client link, 2 min at 200/s")
    case.begin(first_poison=85000)
    proxies = list(PROXY_PORTS)
    clients = [s for s in [*case.producers, *case.consumers] if isinstance(s, ContainerService)]
    case.fault_starts()
    topology.add_latency(proxies, latency_ms=200, jitter_ms=50)
    for client in clients:
        lossy(client.cid, ALL_CLIENT_PORTS, 0.02)
    started_at = time.monotonic()
    start_wall = time.time()
    acked, rows = case.acked_count(), case.rows()
    case.hold(120, check=lambda: assert_no_restarts(case))
    seconds = time.monotonic() - started_at
    produced = (case.acked_count() - acked) / seconds
    written = (case.rows() - rows) / seconds
    dropped = sum(dropped_packets(c.cid) for c in clients)
    for client in clients:
        heal(client.cid)
    topology.clear_toxics(proxies)
    case.cleared()
    case.wait_recovered(timeout=180)
    with case.pipeline.admin_engine.connect() as conn:
        from sqlalchemy import text

        p50, p99 = conn.execute(
            text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM ("
                " SELECT extract(epoch FROM processed_at - created_at) * 1000 AS ms"
                " FROM orders WHERE created_at >= to_timestamp(:since)"
                " AND created_at < to_timestamp(:until)) AS t"
            ),
            {"since": start_wall + 5, "until": start_wall + seconds},
        ).one()
    rebalances = case.rebalances()
    assert rebalances == 0, f"{rebalances} rebalances under a slow, lossy link"
    case.notes.append(
        f"{produced:.0f} orders/s acknowledged and {written:.0f} rows/s written during the"
        f" 2 minutes; end-to-end p50 {p50:.0f} ms, p99 {p99:.0f} ms; {dropped} packets"
        " dropped by the 2% rules"
    )
    case.conclude(
        extra={
            "produced_per_s": round(produced, 1),
            "written_per_s": round(written, 1),
            "p50_ms": round(float(p50), 1),
            "p99_ms": round(float(p99), 1),
            "dropped_packets": dropped,
        }
    )


@pytest.mark.timeout(600)
def test_case6_a_flapping_link(net_case: NetCase) -> None:
    case = net_case("6", "a consumer's links cut and restored every 5 s for a minute")
    case.begin(first_poison=86000)
    victim = case.consumer(1)
    case.fault_starts()
    for _ in range(6):
        cut_ports(victim.cid, ALL_CLIENT_PORTS)
        case.hold(5)
        heal(victim.cid)
        case.hold(5)
    case.cleared()
    case.wait_recovered(timeout=180)
    case.notes.append(
        f"6 cuts of 5 s; consumer 1 restarts {victim.restarts()}, owns {sorted(owned(victim))}"
        " at the end"
    )
    case.conclude()
