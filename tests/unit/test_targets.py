import pytest

from prewarm.core.catalog import load_catalog, pop_dns_name
from prewarm.core.targets import TargetError, expand_targets


def test_pops_are_normalised_and_deduplicated() -> None:
    assert expand_targets("pop", ["atl56-c1", "ATL56-C1", "SIN2-C1"]) == ["ATL56-C1", "SIN2-C1"]


def test_empty_lists_mean_the_default_sets() -> None:
    catalog = load_catalog()
    regions_default = expand_targets("region")
    assert expand_targets("pop") == regions_default
    assert not set(regions_default) & set(catalog.regions["cn"])
    assert set(regions_default) == {p for k, v in catalog.regions.items() if k != "cn" for p in v}
    assert len(regions_default) == len(set(regions_default))
    countries_default = expand_targets("country")
    assert set(countries_default) == {p for v in catalog.countries.values() for p in v}
    assert len(countries_default) == len(set(countries_default))


def test_region_overlap_is_deduplicated_case_insensitively() -> None:
    # jp's POPs are also in apac: no POP twice (the AWS sample duplicated them and never finished).
    pops = expand_targets("region", regions=["APAC", "jp", "Jp"])
    assert pops == list(load_catalog().regions["apac"])


def test_country_overlap() -> None:
    pops = expand_targets("country", countries=["singapore", "Malaysia", "australia", "new_zealand"])
    assert pops == ["SIN2-P1", "SIN2-P2", "SYD1-C1", "SYD62-P2"]


def test_errors_name_the_field() -> None:
    with pytest.raises(TargetError) as info:
        expand_targets("region", regions=["mars"])
    assert info.value.field == "regions"
    with pytest.raises(TargetError) as info:
        expand_targets("pop", pops=["ATL56"])
    assert info.value.field == "pops"
    with pytest.raises(TargetError) as info:
        expand_targets("planet")
    assert info.value.field == "target_type"


def test_pop_dns_name() -> None:
    assert pop_dns_name("d111111abcdef8.cloudfront.net", "ATL56-C1") == "d111111abcdef8.ATL56-C1.cloudfront.net"
