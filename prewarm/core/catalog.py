"""The POP catalogue shipped with the package: region and country tables of CloudFront POP codes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

POP_CODE = re.compile(r"^[A-Z]{3}[0-9]{1,3}-[A-Z][0-9]{1,2}$")
"""A CloudFront POP code such as ``ATL56-C1``: airport code, site number, a letter and a number."""

# Regions reachable only from a deployment inside China: left out of every default set.
_CHINA_ONLY = frozenset({"cn"})


@dataclass(frozen=True)
class Catalog:
    regions: dict[str, tuple[str, ...]]
    countries: dict[str, tuple[str, ...]]
    recs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Regional edge cache (by its AWS Region) -> the POPs that send their misses to it: a default by nearest
    Region, since AWS publishes no mapping (the catalogue's ``about_recs``)."""

    def rec_of(self, pop: str) -> str | None:
        """The REC ``pop`` sends its misses to: the table's, else that of a catalogued POP at the same airport
        (the code's first three letters); None when neither is known."""
        for rec, pops in self.recs.items():
            if pop in pops:
                return rec
        airport = pop[:3]
        for rec, pops in self.recs.items():
            if any(p[:3] == airport for p in pops):
                return rec
        return None

    def default_pops(self, target_type: str) -> list[str]:
        """The set used when the request's list for ``target_type`` is empty."""
        if target_type == "country":
            groups = self.countries.values()
        else:
            groups = (pops for name, pops in self.regions.items() if name not in _CHINA_ONLY)
        return dedupe(pop for group in groups for pop in group)

    def all_pops(self) -> list[str]:
        return dedupe(
            pop for table in (self.regions, self.countries) for group in table.values() for pop in group
        )


def dedupe(items: object) -> list[str]:
    """Order-preserving de-duplication (the AWS sample duplicated POPs after expansion)."""
    return list(dict.fromkeys(items))  # type: ignore[arg-type]


@cache
def load_catalog() -> Catalog:
    raw = json.loads(resources.files("prewarm").joinpath("data/pop-catalog.json").read_text())
    return Catalog(
        regions={k.lower(): tuple(v) for k, v in raw["regions"].items()},
        countries={k.lower(): tuple(v) for k, v in raw["countries"].items()},
        recs={k: tuple(v) for k, v in raw.get("recs", {}).items()},
    )


def pop_dns_name(cf_domain: str, pop: str) -> str:
    """``d111111abcdef8.cloudfront.net`` + ``ATL56-C1`` -> ``d111111abcdef8.ATL56-C1.cloudfront.net``."""
    dist = cf_domain.split(".", 1)[0]
    return f"{dist}.{pop}.cloudfront.net"
