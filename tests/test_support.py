"""The test harness's own promises: ports that no other part of the run can take."""

from __future__ import annotations

import socket

from tests.support import free_port


def ephemeral_range() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as limits:
        low, high = limits.read().split()
    return range(int(low), int(high) + 1)


def test_free_port_gives_ports_no_client_socket_or_port_0_server_can_take() -> None:
    ports = [free_port() for _ in range(20)]
    assert not set(ports) & set(ephemeral_range())
    assert all(port + 10000 not in ephemeral_range() for port in ports)  # Redis Cluster bus ports
    assert len(set(ports)) == len(ports)


def test_free_port_skips_a_port_somebody_holds() -> None:
    first = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        for _ in range(50):
            assert free_port() != first
