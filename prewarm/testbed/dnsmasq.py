"""The testbed's DNS: dnsmasq answering for the distribution, its POPs and the customer hosts.

Named ``dnsmasq`` rather than ``dns`` so that running a file from this directory can never
shadow the ``dns`` package (dnspython).

Answers (dnsmasq compares names case-insensitively, so ``ATL56-C1`` and ``atl56-c1`` match):

* ``<dist>.<POP>.cloudfront.net`` -> the POP's A records (two for a two-address POP);
* ``<dist>.cloudfront.net`` -> the first POP's first address;
* each customer host -> CNAME ``<dist>.cloudfront.net``;
* anything else under ``cloudfront.net`` or a customer domain -> NXDOMAIN (``local=``); names
  elsewhere are REFUSED, since there is no upstream server (``no-resolv``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from prewarm.testbed.proc import Child, find_binary, spawn


def customer_domains(hosts: Sequence[str]) -> list[str]:
    """Domains made authoritative: each host and its parent when the host has 3+ labels."""
    domains: list[str] = []
    for host in hosts:
        labels = host.lower().split(".")
        for domain in (".".join(labels[1:]) if len(labels) >= 3 else "", ".".join(labels)):
            if domain and domain not in domains:
                domains.append(domain)
    return domains


def dnsmasq_conf(workdir: Path, listen: str, port: int, distribution: str,
                 pop_addresses: Mapping[str, Sequence[str]], hosts: Sequence[str], ttl: int = 60) -> str:
    """dnsmasq configuration text (used with ``-C``, so /etc/dnsmasq.conf is never read)."""
    cf_domain = f"{distribution}.cloudfront.net"
    lines = [
        f"port={port}",
        f"listen-address={listen}",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "no-negcache",
        "user=root" if os.geteuid() == 0 else "",
        "pid-file=",
        f"log-facility={workdir / 'dnsmasq.log'}",
        f"local-ttl={ttl}",
        "local=/cloudfront.net/",
        *(f"local=/{d}/" for d in customer_domains(hosts)),
    ]
    first = next(iter(pop_addresses.values()))[0]
    lines.append(f"host-record={cf_domain},{first}")
    for pop, addresses in pop_addresses.items():
        lines.extend(f"host-record={distribution}.{pop}.cloudfront.net,{a}" for a in addresses)
    lines.extend(f"cname={host},{cf_domain}" for host in hosts)
    return "\n".join(line for line in lines if line) + "\n"


def start_dnsmasq(conf: Path, log: Path) -> Child:
    """Start dnsmasq in the foreground of its own session."""
    dnsmasq = find_binary("dnsmasq")
    args = [dnsmasq, "--keep-in-foreground", "-C", str(conf)]
    return spawn("dnsmasq", args, log, marker=str(conf))
