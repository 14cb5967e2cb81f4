"""Each validation rule: valid orders pass, every kind of invalid input is named."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from foodpipe import models
from foodpipe.consumer.classify import ErrorClass
from foodpipe.consumer.decode import MAX_REASON_CHARS, MAX_VALUE_BYTES, decode
from foodpipe.errors import PoisonMessage
from tests.poison import HOSTILE_VALID, POISON, PoisonCase, order_dict, record, valid_order


def poison_class(key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(PoisonMessage) as caught:
        decode(key, value)
    assert caught.value.reason, "a poison message always carries a readable reason"
    assert "\n" not in caught.value.reason
    return caught.value.error_class


def test_a_valid_order_decodes_to_the_same_order() -> None:
    order = valid_order(1)
    key, value = record(order)
    decoded = decode(key, value)
    assert decoded == order
    assert decoded.total_amount == Decimal("27.00")


def test_json_numbers_are_accepted_for_money() -> None:
    data = order_dict(2)
    data["total_amount"] = 27.0
    data["items"][0]["unit_price"] = 12.5
    assert decode(b"CUST-00003", json.dumps(data).encode()).total_amount == Decimal("27.00")


def test_unknown_extra_fields_are_ignored_for_forward_compatibility() -> None:
    data = order_dict(3)
    data["loyalty_points"] = 12
    assert decode(b"CUST-00004", json.dumps(data).encode()).order_id == data["order_id"]


@pytest.mark.parametrize("order", HOSTILE_VALID, ids=lambda o: o.items[0].name[:20])
def test_hostile_but_valid_strings_are_valid_orders(order: object) -> None:
    key, value = record(order)  # type: ignore[arg-type]
    assert decode(key, value) == order


@pytest.mark.parametrize("case", POISON, ids=lambda c: c.label)
def test_every_poison_case_is_classified(case: PoisonCase) -> None:
    if case.error_class == ErrorClass.DB_CONSTRAINT:
        # Valid to the contract; only PostgreSQL refuses it (see the integration tests).
        decode(case.key, case.value)
        return
    assert poison_class(case.key, case.value) == case.error_class


def test_the_corpus_covers_every_error_class() -> None:
    assert {case.error_class for case in POISON} == {str(c) for c in ErrorClass}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("order_id", None, ErrorClass.SCHEMA_VIOLATION),
        ("order_id", "ORD-2025-1", ErrorClass.SCHEMA_VIOLATION),
        ("order_id", "ORD-20250230-00001", ErrorClass.SCHEMA_VIOLATION),  # 30 February
        ("customer_id", "CUST-123456", ErrorClass.SCHEMA_VIOLATION),
        ("customer_id", 12345, ErrorClass.SCHEMA_VIOLATION),
        ("status", "PENDING", ErrorClass.SCHEMA_VIOLATION),
        ("status", "shipped", ErrorClass.SCHEMA_VIOLATION),
        ("created_at", "yesterday", ErrorClass.SCHEMA_VIOLATION),
        ("items", None, ErrorClass.SCHEMA_VIOLATION),
        ("total_amount", "twelve", ErrorClass.SCHEMA_VIOLATION),
        ("total_amount", "0", ErrorClass.BUSINESS_RULE),
        ("total_amount", "-0.01", ErrorClass.BUSINESS_RULE),
        ("total_amount", "27.001", ErrorClass.BUSINESS_RULE),  # sub-cent amount
        ("total_amount", "27.01", ErrorClass.BUSINESS_RULE),  # not the sum of the items
        ("total_amount", "123456789.00", ErrorClass.BUSINESS_RULE),  # exceeds NUMERIC(10,2)
    ],
)
def test_field_rules(field: str, value: object, expected: ErrorClass) -> None:
    data = order_dict(5)
    data[field] = value
    assert poison_class(b"CUST-00006", json.dumps(data).encode()) == expected


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"quantity": 0}, ErrorClass.BUSINESS_RULE),
        ({"quantity": -3}, ErrorClass.BUSINESS_RULE),
        ({"quantity": 1.5}, ErrorClass.SCHEMA_VIOLATION),
        ({"quantity": True}, ErrorClass.SCHEMA_VIOLATION),
        ({"unit_price": "-1.00"}, ErrorClass.BUSINESS_RULE),
        ({"name": ""}, ErrorClass.SCHEMA_VIOLATION),
        ({"name": "x" * 101}, ErrorClass.SCHEMA_VIOLATION),
    ],
)
def test_item_rules(change: dict[str, object], expected: ErrorClass) -> None:
    data = order_dict(6, items=(("Soup", 1, "5.00"),))
    data["items"][0].update(change)
    assert poison_class(b"CUST-00007", json.dumps(data).encode()) == expected


def test_a_mix_of_shape_and_rule_errors_is_a_schema_violation() -> None:
    data = order_dict(7)
    data["total_amount"] = "0"
    del data["created_at"]
    assert poison_class(b"CUST-00008", json.dumps(data).encode()) == ErrorClass.SCHEMA_VIOLATION


def test_oversize_is_rejected_before_parsing() -> None:
    value = b"[" * (MAX_VALUE_BYTES + 1)  # would be expensive nesting if it were parsed
    assert poison_class(b"k", value) == ErrorClass.OVERSIZE


def test_an_order_just_under_the_size_cap_is_still_parsed() -> None:
    data = order_dict(8)
    data["padding"] = "x" * (MAX_VALUE_BYTES - len(json.dumps(data)) - 20)
    value = json.dumps(data).encode()
    assert len(value) <= MAX_VALUE_BYTES
    assert decode(b"CUST-00009", value).order_id == data["order_id"]


def test_reasons_are_capped() -> None:
    data = {f"f{i}": i for i in range(200)}
    data.update({"items": [{"name": "", "quantity": "x", "unit_price": "y"}] * 50})
    with pytest.raises(PoisonMessage) as caught:
        decode(b"k", json.dumps(data).encode())
    assert len(caught.value.reason) <= MAX_REASON_CHARS


def test_the_reason_names_the_field_and_the_rule() -> None:
    data = order_dict(9, items=(("Soup", 0, "5.00"),))
    with pytest.raises(PoisonMessage) as caught:
        decode(b"CUST-00010", json.dumps(data).encode())
    assert "items.0.quantity" in caught.value.reason
    assert "greater than or equal to 1" in caught.value.reason
    assert str(caught.value).startswith("business_rule: ")


def test_value_errors_win_over_key_errors() -> None:
    assert poison_class(None, b"not json") == ErrorClass.JSON_INVALID


def _add_fields(data: dict[str, Any]) -> None:
    data["tip"] = "2.00"
    data["items"][0]["spicy"] = True


def _rename_customer_id(data: dict[str, Any]) -> None:
    data["customer"] = data.pop("customer_id")


def _quantity_as_string(data: dict[str, Any]) -> None:
    data["items"][0]["quantity"] = "2"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_add_fields, None),
        (_rename_customer_id, "customer_id: Field required"),
        (_quantity_as_string, "items.0.quantity: Input should be a valid integer"),
    ],
    ids=["added-fields", "renamed-field", "changed-type"],
)
def test_schema_evolution_cases_of_the_docs(
    change: Callable[[dict[str, Any]], None], reason: str | None
) -> None:
    """docs/KeyPoints/schema-evolution.md: added fields are dropped; a renamed field or a
    changed type is a schema violation."""
    data = order_dict(5, items=(("Pizza", 2, "9.50"),))
    change(data)
    key, value = data.get("customer_id", "CUST-00006").encode(), json.dumps(data).encode()
    if reason is None:
        row = decode(key, value).to_row()
        assert "tip" not in row
        assert row["items"] == [{"name": "Pizza", "quantity": 2, "unit_price": "9.50"}]
        return
    with pytest.raises(PoisonMessage) as caught:
        decode(key, value)
    assert caught.value.error_class == ErrorClass.SCHEMA_VIOLATION
    assert caught.value.reason.startswith(reason)


def test_a_date_part_found_valid_is_remembered_and_an_invalid_one_never() -> None:
    for _ in range(2):  # the second time from the remembered days
        assert decode(*record(valid_order(1))).order_id == "ORD-20250110-00001"
    assert "20250110" in models._REAL_DAYS
    data = order_dict(1)
    data["order_id"] = "ORD-20250230-00001"
    for _ in range(2):
        assert poison_class(b"CUST-00002", json.dumps(data).encode()) == (
            ErrorClass.SCHEMA_VIOLATION
        )
    assert "20250230" not in models._REAL_DAYS


def test_the_remembered_date_parts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_REAL_DAYS", set())
    monkeypatch.setattr(models, "_REAL_DAYS_MAX", 2)
    for day in ("20250101", "20250102", "20250103"):
        data = order_dict(1)
        data["order_id"] = f"ORD-{day}-00001"
        assert decode(b"CUST-00002", json.dumps(data).encode()).order_id.startswith(f"ORD-{day}")
    assert sorted(models._REAL_DAYS) == ["20250101", "20250102"]
