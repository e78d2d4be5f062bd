import re

import pytest

from prewarm.net.popclient import backoff_delay, retry_after_seconds
from prewarm.net.resolve import edge_address_problem, parse_nameserver
from prewarm.settings import Settings


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.3.0.1:5353") == ("127.3.0.1", 5353)
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("::1") == ("::1", 53)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.1.1", False), ("169.254.169.254", False),
        ("224.0.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1", False),
        ("13.32.0.1", True), ("2600:9000::1", True),
    ],
)
def test_edge_address_guard(address: str, allowed: bool) -> None:
    assert (edge_address_problem(address, allow_private=False) is None) is allowed
    if not allowed and address not in ("224.0.0.1", "0.0.0.0"):
        assert edge_address_problem(address, allow_private=True) is None


def test_guard_message_names_the_setting() -> None:
    assert "PREWARM_ALLOW_PRIVATE_EDGES" in (edge_address_problem("169.254.169.254", False) or "")


def test_retry_after() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_backoff_honours_retry_after_and_cap() -> None:
    assert 0.1 <= backoff_delay(1, 0.2, None, 30) <= 0.3
    assert backoff_delay(1, 0.2, 5, 30) >= 5
    assert backoff_delay(1, 0.2, 500, 30) <= 30


def test_settings_from_env() -> None:
    s = Settings.from_env({"PREWARM_NAMESERVERS": "127.0.0.1:53, 127.0.0.2:54", "PREWARM_CA_BUNDLE": "/x",
                           "PREWARM_ALLOW_PRIVATE_EDGES": "1", "PREWARM_MAX_URLS": "10"})
    assert s.nameservers == ("127.0.0.1:53", "127.0.0.2:54")
    assert s.ca_bundle == "/x" and s.allow_private_edges and s.max_urls == 10
    assert not Settings.from_env({}).allow_private_edges
    assert Settings.from_env({}).standby and not Settings.from_env({"PREWARM_STANDBY": "0"}).standby
    assert Settings.from_env({"PREWARM_COORDINATOR_SILENCE_TIMEOUT": "12.5"}).coordinator_silence_s == 12.5
    with pytest.raises(ValueError, match="PREWARM_MAX_URLS"):
        Settings.from_env({"PREWARM_MAX_URLS": "many"})
    assert Settings.from_env({"PREWARM_ATTEMPTS": "1"}).attempts == 1
    with pytest.raises(ValueError, match="PREWARM_ATTEMPTS='0' must be at least 1"):
        Settings.from_env({"PREWARM_ATTEMPTS": "0"})  # a fetch with no attempt would count as warmed



@pytest.mark.parametrize(("name", "bad", "why"), [
    ("PREWARM_BATCH_SIZE", "0", "must be at least 1"),  # the lanes' batches would be cut into nothing
    ("PREWARM_MAX_CONCURRENCY", "0", "must be at least 1"),
    ("PREWARM_MAX_ACTIVE_JOBS", "-2", "must be at least 1"),
    ("PREWARM_MAX_URLS", "0", "must be at least 1"),
    ("PREWARM_FETCH_TIMEOUT", "0", "must be more than 0"),  # every fetch would time out
    ("PREWARM_CONNECT_TIMEOUT", "-1", "must be more than 0"),
    ("PREWARM_DNS_TIMEOUT", "nan", "is not a finite number"),
    ("PREWARM_WEBHOOK_TIMEOUT", "inf", "is not a finite number"),  # every network call has a time limit
    ("PREWARM_COORDINATOR_SILENCE_TIMEOUT", "0", "must be more than 0"),
    ("PREWARM_REPORT_URL_EXPIRY", "0", "must be at least 1"),
    ("PREWARM_BACKOFF_BASE", "-0.5", "must be at least 0"),
    ("PREWARM_FETCHERS_PER_NODE", "-1", "must be at least 0"),
])
def test_a_numeric_setting_out_of_its_range_is_refused_by_name(name: str, bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"setting {name}='{re.escape(bad)}' {why}"):
        Settings.from_env({name: bad})


def test_numeric_settings_at_their_limits_are_taken() -> None:
    s = Settings.from_env({"PREWARM_BATCH_SIZE": "1", "PREWARM_FETCH_TIMEOUT": "0.5", "PREWARM_BACKOFF_BASE": "0",
                           "PREWARM_FETCHERS_PER_NODE": "0", "PREWARM_WEBHOOK_WINDOW": "0"})
    assert (s.batch_size, s.fetch_timeout_s, s.backoff_base_s, s.fetchers_per_node, s.webhook_window_s) == (
        1, 0.5, 0.0, 0, 0.0)
