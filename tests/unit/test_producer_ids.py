"""Order ids: format, uniqueness across allocators/threads/processes/restarts, days."""

from __future__ import annotations

import json
import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from foodpipe.models import ORDER_ID_PATTERN, Order, OrderItem, order_day
from foodpipe.producer.ids import (
    MAX_NUMBER,
    RETAIN_DAYS,
    STATE_FILE,
    OrderIdAllocator,
    OrderIdError,
    format_order_id,
)

DAY = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _state(state_dir: Path) -> dict[str, int]:
    days: dict[str, int] = json.loads((state_dir / STATE_FILE).read_text())["days"]
    return days


def _write_state(state_dir: Path, days: dict[str, int]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps({"days": days}))


def _valid_order(order_id: str) -> Order:
    return Order(
        order_id=order_id,
        customer_id="CUST-00001",
        items=[OrderItem(name="Pad Thai", quantity=1, unit_price=Decimal("12.95"))],
        total_amount=Decimal("12.95"),
        created_at=DAY,
    )


def test_ids_have_the_contract_format_and_count_from_one(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path)
    got = [ids.next_id(DAY) for _ in range(3)]
    assert got == ["ORD-20250110-00001", "ORD-20250110-00002", "ORD-20250110-00003"]
    assert all(re.fullmatch(ORDER_ID_PATTERN, i) for i in got)
    assert format_order_id(date(2025, 1, 10), 7) == "ORD-20250110-00007"


def test_the_date_is_the_utc_day_of_created_at(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path)
    evening_in_new_york = datetime(2025, 1, 10, 21, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert order_day(ids.next_id(evening_in_new_york)) == date(2025, 1, 11)
    morning_in_tokyo = datetime(2025, 1, 11, 8, 0, tzinfo=timezone(timedelta(hours=9)))
    assert order_day(ids.next_id(morning_in_tokyo)) == date(2025, 1, 10)


def test_naive_datetimes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        OrderIdAllocator(tmp_path).next_id(datetime(2025, 1, 10, 9, 0))


def test_one_allocator_never_repeats_itself(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path, min_block=10, max_block=1000)
    got = [ids.next_id(DAY) for _ in range(20_000)]
    assert len(set(got)) == len(got)


def test_a_restart_continues_after_every_reserved_block(tmp_path: Path) -> None:
    first = OrderIdAllocator(tmp_path, min_block=100)
    before = [first.next_id(DAY) for _ in range(5)]
    # "Crash": the allocator is dropped with 95 numbers of its block unused.
    restarted = OrderIdAllocator(tmp_path, min_block=100)
    after = [restarted.next_id(DAY) for _ in range(5)]
    assert after[0] == "ORD-20250110-00101", "the unused rest of a block is a gap"
    assert not set(before) & set(after)


def test_allocators_in_threads_sharing_a_directory_never_collide(tmp_path: Path) -> None:
    results: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def work(slot: int) -> None:
        ids = OrderIdAllocator(tmp_path, min_block=7, max_block=50)
        barrier.wait()
        results[slot].extend(ids.next_id(DAY) for _ in range(3000))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for chunk in results for i in chunk]
    assert len(every) == 24_000
    assert len(set(every)) == 24_000


def test_threads_sharing_one_allocator_never_collide(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path, min_block=3, max_block=30)
    results: list[list[str]] = [[] for _ in range(6)]

    def work(slot: int) -> None:
        results[slot].extend(ids.next_id(DAY) for _ in range(2000))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for chunk in results for i in chunk]
    assert len(set(every)) == len(every) == 12_000


def _allocate_in_a_process(state_dir: str, n: int) -> list[str]:
    ids = OrderIdAllocator(Path(state_dir), min_block=5, max_block=40)
    return [ids.next_id(DAY) for _ in range(n)]


def test_separate_processes_sharing_a_directory_never_collide(tmp_path: Path) -> None:
    # "spawn" starts fresh interpreters, as separate producer containers would be.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=context) as pool:
        futures = [pool.submit(_allocate_in_a_process, str(tmp_path), 3000) for _ in range(4)]
        every = [i for future in futures for i in future.result(timeout=120)]
    assert len(every) == 12_000
    assert len(set(every)) == 12_000
    # And the state now points past every id handed out.
    highest = max(int(i.rsplit("-", 1)[1]) for i in every)
    assert _state(tmp_path)["20250110"] > highest


def test_each_day_counts_from_one_and_days_do_not_interfere(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path, min_block=10)
    assert ids.next_id(DAY) == "ORD-20250110-00001"
    assert ids.next_id(DAY) == "ORD-20250110-00002"
    next_day = DAY + timedelta(days=1)
    assert ids.next_id(next_day) == "ORD-20250111-00001"
    # A clock (or another producer) still on the previous day continues that day's
    # count; it never restarts at 00001, which would repeat ids.
    lagging = OrderIdAllocator(tmp_path, min_block=10)
    assert lagging.next_id(DAY) == "ORD-20250110-00011"
    assert ids.next_id(DAY) == "ORD-20250110-00021"
    assert _state(tmp_path) == {"20250110": 31, "20250111": 11}


def test_rollover_at_midnight_utc(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path, min_block=1000)
    before = datetime(2025, 1, 10, 23, 59, 59, 999999, tzinfo=UTC)
    after = before + timedelta(microseconds=1)
    assert ids.next_id(before) == "ORD-20250110-00001"
    assert ids.next_id(after) == "ORD-20250111-00001"
    assert ids.next_id(after) == "ORD-20250111-00002"


def test_past_99999_the_numeric_part_widens_and_stays_valid(tmp_path: Path) -> None:
    _write_state(tmp_path, {"20250110": 99_998})
    ids = OrderIdAllocator(tmp_path, min_block=100)
    got = [ids.next_id(DAY) for _ in range(4)]
    assert got == [
        "ORD-20250110-99998",
        "ORD-20250110-99999",
        "ORD-20250110-100000",
        "ORD-20250110-100001",
    ]
    for order_id in got:
        assert _valid_order(order_id).order_id == order_id
    assert len(set(got)) == 4


def test_nine_digits_is_the_end_of_a_day(tmp_path: Path) -> None:
    _write_state(tmp_path, {"20250110": MAX_NUMBER - 1})
    ids = OrderIdAllocator(tmp_path, min_block=100)
    last_two = [ids.next_id(DAY), ids.next_id(DAY)]
    assert last_two == ["ORD-20250110-999999998", "ORD-20250110-999999999"]
    assert _valid_order(last_two[-1])
    with pytest.raises(OrderIdError, match="exhausted"):
        ids.next_id(DAY)
    # The next day is unaffected.
    assert ids.next_id(DAY + timedelta(days=1)) == "ORD-20250111-00001"


def test_blocks_grow_when_used_fast_and_shrink_when_used_slowly(tmp_path: Path) -> None:
    clock = FakeClock()
    ids = OrderIdAllocator(tmp_path, min_block=10, max_block=80, clock=clock)
    reserved: list[int] = []
    seen: list[str] = []

    def use(n: int, seconds_apart: float) -> None:
        for _ in range(n):
            before = ids.blocks_reserved
            seen.append(ids.next_id(DAY))
            if ids.blocks_reserved != before:
                # A new block starts at this id; the state says where it ends.
                reserved.append(_state(tmp_path)["20250110"] - int(seen[-1][-5:]))
            clock.t += seconds_apart

    use(310, 0.001)  # 310 ids in 0.3 s: every block lasts well under a second
    assert reserved == [10, 20, 40, 80, 80, 80]
    reserved.clear()
    use(160, 10.0)  # one id every 10 s: blocks last minutes
    assert reserved == [80, 40, 20, 10, 10]
    assert len(set(seen)) == len(seen)


def test_a_corrupt_state_file_is_refused_not_reset(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    ids = OrderIdAllocator(tmp_path)
    with pytest.raises(OrderIdError, match="corrupt") as caught:
        ids.next_id(DAY)
    assert "\n" not in str(caught.value)
    assert (tmp_path / STATE_FILE).read_text() == "{not json", "left for a human to inspect"


@pytest.mark.parametrize(
    "content",
    [
        '{"days": {"2025011": 5}}',
        '{"days": {"20251301": 5}}',
        '{"days": {"20250110": "5"}}',
        '{"days": []}',
        '{"other": 1}',
        "[]",
    ],
)
def test_malformed_state_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(OrderIdError, match="corrupt"):
        OrderIdAllocator(tmp_path).next_id(DAY)


def test_an_unusable_state_directory_is_one_clear_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OrderIdError, match="PRODUCER_STATE_DIR") as caught:
        OrderIdAllocator(not_a_dir / "state")
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 3


def test_a_clock_far_behind_the_newest_day_is_refused(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path)
    ids.next_id(DAY)
    stale = DAY - timedelta(days=RETAIN_DAYS + 1)
    with pytest.raises(OrderIdError, match="check the system clock"):
        OrderIdAllocator(tmp_path).next_id(stale)
    # Within the retention window an earlier day is fine.
    assert OrderIdAllocator(tmp_path).next_id(DAY - timedelta(days=RETAIN_DAYS)).endswith("-00001")


def test_old_days_are_pruned_from_the_state(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path)
    for offset in range(0, 100, 10):
        ids.next_id(DAY + timedelta(days=offset))
    days = sorted(_state(tmp_path))
    newest = DAY + timedelta(days=90)
    assert days[-1] == f"{newest:%Y%m%d}"
    assert days[0] >= f"{newest - timedelta(days=RETAIN_DAYS):%Y%m%d}"
    assert len(days) == 4


def test_the_state_is_replaced_atomically_with_no_leftovers(tmp_path: Path) -> None:
    ids = OrderIdAllocator(tmp_path, min_block=1, max_block=1)
    for _ in range(50):
        ids.next_id(DAY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["order-ids.json", "order-ids.lock"]
    assert _state(tmp_path) == {"20250110": 51}


def test_bad_block_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_block"):
        OrderIdAllocator(tmp_path, min_block=0)
    with pytest.raises(ValueError, match="min_block"):
        OrderIdAllocator(tmp_path, min_block=10, max_block=5)
