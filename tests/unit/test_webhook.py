"""The MLflow webhook receiver's decisions: signature, freshness, replays, malformed bodies, floods."""

from __future__ import annotations

import json

import pytest

from modelpilot.webhook import Receiver, signature

SECRET = "s3cret"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def delivery(body: dict | bytes, delivery_id: str = "d1", at: float = NOW, secret: str = SECRET
             ) -> tuple[dict[str, str], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = str(int(at))
    return ({"x-mlflow-delivery-id": delivery_id, "x-mlflow-timestamp": stamp,
             "x-mlflow-signature": signature(secret, delivery_id, stamp, raw)}, raw)


MOVED = {"entity": "model_version_alias", "action": "created", "timestamp": "2027-01-15T08:00:00+00:00",
         "data": {"name": "fraud", "alias": "champion", "version": "3"}}


@pytest.fixture
def expedited() -> list[str]:
    return []


@pytest.fixture
def receiver(expedited: list[str]) -> Receiver:
    return Receiver(SECRET, lambda m: expedited.append(m) or 1, rate=5, burst=5, clock=Clock())


def test_a_signed_fresh_alias_event_expedites_its_model(receiver: Receiver, expedited: list[str]) -> None:
    verdict = receiver.receive(*delivery(MOVED))
    assert (verdict.status, verdict.result) == (202, "accepted") and expedited == ["fraud"]


@pytest.mark.parametrize(
    ("headers", "status", "result"),
    [
        pytest.param({"x-mlflow-signature": "v1,AAAA"}, 401, "bad_signature", id="wrong-signature"),
        pytest.param({"x-mlflow-signature": ""}, 401, "unsigned", id="no-signature"),
        pytest.param({"x-mlflow-timestamp": "yesterday"}, 401, "unsigned", id="bad-timestamp"),
    ],
)
def test_unsigned_or_forged_deliveries_are_refused(receiver: Receiver, expedited: list[str],
                                                   headers: dict[str, str], status: int, result: str) -> None:
    good, body = delivery(MOVED)
    verdict = receiver.receive({**good, **headers}, body)
    assert (verdict.status, verdict.result) == (status, result) and expedited == []


def test_a_signature_by_another_secret_or_over_another_body_is_refused(receiver: Receiver,
                                                                       expedited: list[str]) -> None:
    assert receiver.receive(*delivery(MOVED, secret="guess")).result == "bad_signature"
    headers, _ = delivery(MOVED)
    other = json.dumps({**MOVED, "data": {"name": "other"}}).encode()
    assert receiver.receive(headers, other).result == "bad_signature"
    assert expedited == []


def test_stale_and_replayed_deliveries_change_nothing(receiver: Receiver, expedited: list[str]) -> None:
    assert receiver.receive(*delivery(MOVED, at=NOW - 301)).status == 400
    assert receiver.receive(*delivery(MOVED, delivery_id="x")).result == "accepted"
    receiver.clock.now += 5  # type: ignore[attr-defined]
    assert receiver.receive(*delivery(MOVED, delivery_id="x")).result == "replayed"
    assert expedited == ["fraud"]


@pytest.mark.parametrize("body", [b"not json", b"[]", json.dumps({"entity": "model_version_alias"}).encode(),
                                  json.dumps({**MOVED, "data": {"name": ""}}).encode()])
def test_malformed_bodies_are_400(receiver: Receiver, expedited: list[str], body: bytes) -> None:
    assert receiver.receive(*delivery(body)).status == 400 and expedited == []


def test_other_events_are_ignored(receiver: Receiver, expedited: list[str]) -> None:
    verdict = receiver.receive(*delivery({**MOVED, "entity": "registered_model"}))
    assert verdict.result == "ignored" and expedited == []


def test_a_signed_flood_is_rate_limited_and_coalesced(receiver: Receiver, expedited: list[str]) -> None:
    results = [receiver.receive(*delivery(MOVED, delivery_id=f"d{i}")).result for i in range(20)]
    assert results.count("accepted") == 1 and results.count("coalesced") == 4
    assert results.count("rate_limited") == 15
    assert expedited == ["fraud"], "one refresh per model per second, however many deliveries"


def test_a_standby_answers_503(expedited: list[str]) -> None:
    standby = Receiver(SECRET, lambda m: expedited.append(m) or 1, leading=lambda: False)
    assert standby.receive(*delivery(MOVED)).status == 503 and expedited == []
