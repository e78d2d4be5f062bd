"""``free_port``: a port for a listener another process binds later, never from the ephemeral range."""

from __future__ import annotations

import socket

from prewarm.testbed.net import ephemeral_ports, free_port


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low, _ = ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert all(20_000 <= p < low for p in ports), ports  # not in Ray's worker ports either
    assert len(ports) > 1  # drawn at random, not one fixed port
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_chosen_and_prefer_is_honoured() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert free_port(prefer=taken) != taken
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        spare = s.getsockname()[1]
    assert free_port(prefer=spare) == spare
