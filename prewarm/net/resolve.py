"""DNS: the addresses of each POP, and the CloudFront name behind a customer host (CNAME chain)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from prewarm.core.catalog import pop_dns_name

CLOUDFRONT_NAME = re.compile(r"^[a-z0-9]+\.cloudfront\.net$")


class ResolveError(Exception):
    """A name could not be resolved; the message is shown to the user."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[v6]:port`` or a bare IPv6 address -> (ip, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]")
        return host, int(port.lstrip(":") or 53)
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 53


def edge_address_problem(address: str, allow_private: bool) -> str | None:
    """Why the service must not connect to ``address``, or None. Guards against SSRF via DNS."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if allow_private:
        return None if not (ip.is_multicast or ip.is_unspecified) else f"{ip} is not a unicast address"
    for kind in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address (set PREWARM_ALLOW_PRIVATE_EDGES=1 to allow)"
    return None


@dataclass
class PopAddresses:
    pop: str
    addresses: list[str]
    problem: str | None = None


class Resolver:
    """A DNS client with a bounded lifetime per query, using PREWARM_NAMESERVERS or the system's."""

    def __init__(self, nameservers: tuple[str, ...] = (), timeout_s: float = 5.0) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
            ]
        self._resolver.lifetime = timeout_s
        self._resolver.timeout = min(timeout_s, 2.0)

    async def addresses(self, name: str) -> list[str]:
        """A (then AAAA) records of ``name``; ResolveError with the reason when there are none."""
        found: list[str] = []
        errors: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype)
                found.extend(r.address for r in answer)
            except dns.resolver.NXDOMAIN:
                raise ResolveError(f"{name} does not exist (NXDOMAIN)") from None
            except dns.resolver.NoAnswer:
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                errors.append(type(exc).__name__)
            except dns.exception.DNSException as exc:
                errors.append(str(exc))
            if found:
                break
        if not found:
            detail = f" ({', '.join(errors)})" if errors else ""
            raise ResolveError(f"{name} has no address records{detail}")
        return found

    async def pop_addresses(self, cf_domain: str, pops: list[str], allow_private: bool) -> list[PopAddresses]:
        async def one(pop: str) -> PopAddresses:
            try:
                addresses = await self.addresses(pop_dns_name(cf_domain, pop))
            except ResolveError as exc:
                return PopAddresses(pop, [], str(exc))
            allowed = [a for a in addresses if edge_address_problem(a, allow_private) is None]
            if not allowed:
                return PopAddresses(pop, [], edge_address_problem(addresses[0], allow_private))
            return PopAddresses(pop, allowed)

        return list(await asyncio.gather(*(one(p) for p in pops)))

    async def cloudfront_name(self, name: str) -> str | None:
        """Follow the CNAME chain of ``name`` to a ``<dist>.cloudfront.net`` name, if it leads to one."""
        name = name.rstrip(".").lower()
        if CLOUDFRONT_NAME.match(name):
            return name
        try:
            answer = await self._resolver.resolve(name, "A", raise_on_no_answer=False)
        except dns.exception.DNSException:
            return None
        chain = [name]
        for rrset in answer.response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                chain.extend(str(r.target).rstrip(".").lower() for r in rrset)
        chain.append(str(answer.canonical_name).rstrip(".").lower())
        return next((n for n in chain if CLOUDFRONT_NAME.match(n)), None)


async def find_distribution(resolver: Resolver, cf_domain: str | None, urls: list[str],
                            by_alias: Callable[[list[str]], str]) -> str:
    """The ``<dist>.cloudfront.net`` name to build POP names from; ValueError names the field on failure.

    A cloudfront.net ``cf_domain`` is used as is; another name is followed through its CNAME chain;
    with no ``cf_domain``, the chains of the URLs' hosts must all lead to the same distribution, or else
    ``by_alias`` (blocking, run in a thread; ValueError when it finds none) looks the hosts up as aliases.
    """
    if cf_domain:
        if CLOUDFRONT_NAME.match(cf_domain):
            return cf_domain
        found = await resolver.cloudfront_name(cf_domain)
        if not found:
            raise ValueError(f"field 'cf_domain': {cf_domain!r} is not a *.cloudfront.net name and its "
                             "CNAME chain does not lead to one")
        return found
    hosts = list(dict.fromkeys((urlsplit(u).hostname or "").lower() for u in urls))[:50]
    names = await asyncio.gather(*(resolver.cloudfront_name(h) for h in hosts))
    missing = [h for h, n in zip(hosts, names, strict=True) if not n]
    if missing:
        try:  # the hosts may be a distribution's aliases without a CNAME to it (e.g. Route 53 alias records)
            return await asyncio.to_thread(by_alias, hosts)
        except ValueError as exc:
            raise ValueError(f"field 'cf_domain' is absent, the CNAME chain of {missing[:5]} does not lead to a "
                             f"*.cloudfront.net name, and the CloudFront alias lookup failed: {exc}") from None
    distinct = sorted(set(n for n in names if n))
    if len(distinct) > 1:
        raise ValueError(f"field 'cf_domain' is absent and the URLs' hosts lead to several distributions "
                         f"{distinct}: send one request per distribution, or give cf_domain")
    return distinct[0]
