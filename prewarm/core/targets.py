"""Target expansion: (target_type, pops, countries, regions) -> the de-duplicated list of POP codes."""

from __future__ import annotations

from collections.abc import Sequence

from prewarm.core.catalog import POP_CODE, Catalog, dedupe, load_catalog

TARGET_TYPES = ("pop", "country", "region")


class TargetError(ValueError):
    """A target field names something the catalogue does not know; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def normalise_pop(code: str) -> str:
    return code.strip().upper()


def expand_targets(
    target_type: str,
    pops: Sequence[str] = (),
    countries: Sequence[str] = (),
    regions: Sequence[str] = (),
    catalog: Catalog | None = None,
) -> list[str]:
    """Expand a request's targets; an empty list means the catalogue's default set for that type."""
    catalog = catalog or load_catalog()
    kind = target_type.strip().lower()
    if kind == "pop":
        codes = [normalise_pop(p) for p in pops]
        bad = [p for p in codes if not POP_CODE.match(p)]
        if bad:
            raise TargetError("pops", f"malformed POP code(s) {bad}: expected e.g. 'ATL56-C1'")
        return dedupe(codes) if codes else catalog.default_pops("pop")
    if kind == "region":
        return _expand_named("regions", regions, catalog.regions) or catalog.default_pops("region")
    if kind == "country":
        return _expand_named("countries", countries, catalog.countries) or catalog.default_pops("country")
    raise TargetError("target_type", f"unknown target_type {target_type!r}: use one of {list(TARGET_TYPES)}")


def _expand_named(field: str, names: Sequence[str], table: dict[str, tuple[str, ...]]) -> list[str]:
    keys = [n.strip().lower() for n in names]
    unknown = [n for n, k in zip(names, keys, strict=True) if k not in table]
    if unknown:
        raise TargetError(field, f"unknown {field} {unknown}: valid names are {sorted(table)}")
    return dedupe(pop for k in keys for pop in table[k])
