"""The pure webhook rules (domain/webhooks.py): retry schedule, address rules, signatures, event types."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from openai import OpenAI

from threadline.domain import webhooks as rules
from threadline.errors import ValidationFailed

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_retry_schedule() -> None:
    waits = [rules.retry_delay(n).total_seconds() for n in range(1, 12)]
    assert waits == [5, 15, 45, 135, 405, 1215, 3645, 10935, 21600, 21600, 21600]
    assert rules.retry_delay(1, jitter=1.0) == timedelta(seconds=5.5)


def test_retries_stop_at_the_end_of_the_window() -> None:
    window = timedelta(hours=72)
    at, attempts = T0, 0
    while True:
        attempts += 1
        following = rules.next_attempt_at(T0, at, attempts, window)
        if following is None:
            break
        at = following
    assert attempts == 20 and at <= T0 + window


def test_the_disable_policy_needs_both_time_and_count() -> None:
    policy = rules.DisablePolicy(timedelta(hours=24), 10)
    assert not policy.disables(T0, 50, T0 + timedelta(hours=1))  # a short outage with many events
    assert not policy.disables(T0, 5, T0 + timedelta(hours=48))  # few attempts, however long
    assert policy.disables(T0, 10, T0 + timedelta(hours=24))
    assert not policy.disables(None, 100, T0)


@pytest.mark.parametrize(
    ("address", "strict", "private_allowed"),
    [
        ("93.184.215.14", None, None),
        ("2606:4700::1111", None, None),
        ("127.0.0.1", "a loopback address", None),
        ("::1", "a loopback address", None),
        ("10.0.0.1", "a private address", None),
        ("172.16.5.4", "a private address", None),
        ("192.168.1.1", "a private address", None),
        ("fd12:3456::1", "a private address", None),
        ("100.64.1.1", "a private address", None),
        ("::ffff:192.168.1.1", "a private address", None),
        ("169.254.169.254", "a link-local address", "a link-local address"),
        ("fe80::1", "a link-local address", "a link-local address"),
        ("224.0.0.251", "a multicast address", "a multicast address"),
        ("ff02::1", "a multicast address", "a multicast address"),
        ("0.0.0.0", "the unspecified address", "the unspecified address"),
        ("240.0.0.1", "a reserved address", "a reserved address"),
        ("192.0.2.1", "a reserved address", "a reserved address"),
        ("198.18.0.1", "a reserved address", "a reserved address"),
    ],
)
def test_address_rules(address: str, strict: str | None, private_allowed: str | None) -> None:
    parsed = ipaddress.ip_address(address)
    assert rules.refusal(parsed, allow_private=False) == strict
    assert rules.refusal(parsed, allow_private=True) == private_allowed


def test_every_address_of_a_name_is_checked_and_the_server_is_never_a_target() -> None:
    target = rules.parse_url("https://hooks.example.com/in?x=1")
    assert (target.host, target.port, target.target, target.host_header) == (
        "hooks.example.com",
        443,
        "/in?x=1",
        "hooks.example.com",
    )
    assert target.url_for("2606:4700::1111") == "https://[2606:4700::1111]:443/in?x=1"
    check = rules.check_addresses
    check(target, ["93.184.215.14"], allow_private=False, own_addresses=frozenset(), own_port=8000)
    with pytest.raises(ValidationFailed, match=r"10\.0\.0\.7"):
        check(target, ["93.184.215.14", "10.0.0.7"], allow_private=False, own_addresses=frozenset(), own_port=8000)
    with pytest.raises(ValidationFailed, match="own address"):
        check(target, ["93.184.215.14"], allow_private=False, own_addresses=frozenset({"93.184.215.14"}), own_port=1)
    on_own_port = rules.parse_url("http://127.0.0.1:8000/v1/threads")
    with pytest.raises(ValidationFailed, match="this server itself"):
        check(on_own_port, ["127.0.0.1"], allow_private=True, own_addresses=frozenset(), own_port=8000)
    with pytest.raises(ValidationFailed) as unresolvable:
        check(target, [], allow_private=True, own_addresses=frozenset(), own_port=8000)
    assert unresolvable.value.code == "webhook_url_unresolvable"


def test_signatures_verify_with_the_openai_sdk_under_every_current_secret() -> None:
    old, new = rules.new_secret(), rules.new_secret()
    assert old.startswith("whsec_") and old != new and len(old) == 6 + 44
    body = rules.event_body("evt_1", "response.completed", T0, {"id": "resp_1"})
    assert (
        body
        == '{"id":"evt_1","object":"event","type":"response.completed","created_at":1767225600,"data":{"id":"resp_1"}}'
    )
    headers = rules.signature_headers("wh_1", datetime.now(UTC), body, [new, old])
    sdk = OpenAI(api_key="unused", base_url="http://unused.invalid/v1")
    for secret in (new, old):
        event = sdk.webhooks.unwrap(body, headers, secret=secret)
        assert event.type == "response.completed" and event.data.id == "resp_1"


def test_response_event_types() -> None:
    assert rules.response_event_type("completed", "stop") == "response.completed"
    assert rules.response_event_type("completed", "length") == "response.incomplete"
    assert rules.response_event_type("completed", "content_filter") == "response.incomplete"
    assert rules.response_event_type("failed", None) == "response.failed"
    assert rules.response_event_type("cancelled", None) == "response.cancelled"
    assert rules.response_event_type("in_progress", None) is None
    assert rules.response_event_type("queued", None) is None
