"""Shared fixtures: a real local CDN testbed (nginx + dnsmasq + aiohttp origin) for integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prewarm.testbed import Testbed

# The session testbed hosts every catalogue POP; this one also gets a second address.
TWO_ADDRESS_POP = "IAD89-P1"


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """One started testbed for the whole session (start takes well under a second)."""
    tb = Testbed(two_address_pops=(TWO_ADDRESS_POP,), workdir=tmp_path_factory.mktemp("testbed"))
    tb.start()
    try:
        yield tb
    finally:
        tb.stop()


@pytest.fixture
def clean_testbed(testbed: Testbed) -> Iterator[Testbed]:
    """The session testbed with every POP cache purged and origin counters and faults cleared."""
    testbed.reset()
    yield testbed
