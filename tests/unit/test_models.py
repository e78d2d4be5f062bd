from itertools import product

import pytest
from pydantic import ValidationError

from prewarm.core.validation import _PLAIN_URL, _parsed_url_problem, url_problem
from prewarm.schema import (
    InstancesRequest,
    PrewarmRequest,
    RequestError,
    check_req_id,
    parse_headers,
    request_error,
)

BASE = {
    "url_list": ["https://www.example.com/index.html"],
    "cf_domain": "www.example.com",
    "target_type": "pop",
    "pops": ["ATL56-C1", "SIN2-C1", "DFW55-C3"],
    "countries": [],
    "regions": [],
    "timeout": 5,
    "header": [],
    "instance_count": 1,
    "need_invalidate": False,
}


def error_of(**changes: object) -> RequestError:
    body = {**BASE, **changes}
    body = {k: v for k, v in body.items() if v is not ...}
    with pytest.raises(ValidationError) as info:
        PrewarmRequest.model_validate(body)
    return request_error(info.value)


def test_spec_example_is_accepted() -> None:
    req = PrewarmRequest.model_validate(BASE)
    assert req.target_pops() == ["ATL56-C1", "SIN2-C1", "DFW55-C3"]
    assert req.header == {}
    assert req.cf_domain == "www.example.com"


def test_header_both_forms() -> None:
    a = PrewarmRequest.model_validate({**BASE, "header": ["User-Agent: x/1", "X-A:  b "]})
    b = PrewarmRequest.model_validate({**BASE, "header": {"User-Agent": "x/1", "X-A": "b"}})
    assert a.header == b.header == {"User-Agent": "x/1", "X-A": "b"}


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("url_list", ..., "field 'url_list' is required"),
        ("url_list", [], "field 'url_list': must not be empty"),
        ("url_list", "https://a.com/", "field 'url_list'"),
        ("timeout", ..., "field 'timeout' is required"),
        ("timeout", 0, "field 'timeout': must be more than 0"),
        ("timeout", -1, "field 'timeout'"),
        ("timeout", 1441, "at most 1440 minutes"),
        ("timeout", "5", "field 'timeout': must be a number"),
        ("timeout", True, "field 'timeout': must be a number"),
        ("target_type", "city", "field 'target_type': unknown target_type 'city'"),
        ("target_type", ..., "field 'target_type' is required"),
        ("instance_count", 0, "field 'instance_count': must be between 1 and 300"),
        ("instance_count", 301, "field 'instance_count'"),
        ("instance_count", 1.5, "field 'instance_count': must be a whole number"),
        ("instance_count", ..., "field 'instance_count' is required"),
        ("need_invalidate", "yes", "field 'need_invalidate': must be true or false"),
        ("header", ["Host: evil.com"], "field 'header': header 'Host' may not be set"),
        ("header", {"X-A": "a\r\nX-B: b"}, "contains CR, LF or NUL"),
        ("header", ["no colon"], "field 'header'"),
        ("cf_domain", "not a domain", "field 'cf_domain'"),
        ("pops", ["atl56"], "field 'pops': malformed POP code"),
        ("bogus", 1, "field 'bogus' is not a known field"),
    ],
)
def test_each_bad_field_is_named(field: str, value: object, words: str) -> None:
    assert words in error_of(**{field: value}).message


def test_unknown_region_lists_valid_names() -> None:
    err = error_of(target_type="region", regions=["us", "mars"])
    assert "field 'regions': unknown regions ['mars']" in err.message
    assert "'apac'" in err.message and "'us'" in err.message


def test_unknown_country_lists_valid_names() -> None:
    err = error_of(target_type="country", countries=["atlantis"])
    assert "field 'countries'" in err.message and "'india'" in err.message


def test_invalid_urls_are_listed() -> None:
    bad = ["ftp://a.com/x", "https://a.com/x y", "/relative", "https:///nohost", "http://a.com/\x01"]
    err = error_of(url_list=["https://ok.com/a", *bad])
    assert err.error_urls == bad
    assert "5 invalid URL(s)" in err.message


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://www.example.com/a?b=c", True),
        ("http://127.0.0.1:8080/x", True),
        ("https://[::1]/x", True),
        ("https://exa mple.com/", False),
        ("mailto:a@b.c", False),
        ("https://a.com:99999/", False),
        ("", False),
    ],
)
def test_url_problem(url: str, ok: bool) -> None:
    assert (url_problem(url) is None) is ok


def test_the_quick_path_gives_the_parsers_verdict() -> None:
    """Every URL built from these parts gets the same answer from ``url_problem`` as from the parser alone."""
    schemes = ["http://", "https://", "HTTP://", "ftp://", "http:/", "//", ""]
    hosts = ["a.com", "WWW.Example.COM", "a_b.example", "a.com.", "1.2.3.4", "999.1.1.1", "-a.com", "a-.com",
             "a..com", "x" * 63 + ".com", "x" * 64 + ".com", ".".join(["abcdefg"] * 32), "[::1]", "[::1",
             "user@a.com", "é.com", "a.com\\b", "", "a%41.com"]
    ports = ["", ":", ":0", ":00", ":1", ":080", ":65535", ":65536", ":99999", ":123456", ":-1", ":a"]
    rests = ["", "/", "/x?y#z", "?q", "#f", "/a b", "/é", "/\x01", "//", "/a@b", "\\x", "/[x]", ";p", "/\x7f"]
    quick = 0
    for url in filter(None, ("".join(parts) for parts in product(schemes, hosts, ports, rests))):
        assert url_problem(url) == _parsed_url_problem(url), url
        quick += bool(_PLAIN_URL.fullmatch(url))
    assert quick > 1000  # the quick path is taken, and agrees


def test_parse_headers_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="invalid header name"):
        parse_headers({"Bad Name": "x"})


def test_req_id() -> None:
    rid = "684153cc-efab-4a53-9409-357fddc2e2bd"
    assert check_req_id(rid) == rid
    with pytest.raises(RequestError, match="req_id"):
        check_req_id("nope")
    with pytest.raises(RequestError, match="req_id"):
        check_req_id(None)


def test_instances_request() -> None:
    assert InstancesRequest.model_validate({"DesiredCapacity": 3}).DesiredCapacity == 3
    for bad, words in (
        ({"DesiredCapacity": 301}, "DesiredCapacity"),
        ({"DesiredCapacity": -1}, "DesiredCapacity"),
        ({"force_stop": True}, "force_stop needs req_id"),
        ({}, "give DesiredCapacity"),
        ({"DesiredCapacity": 1, "req_id": "x"}, "req_id"),
    ):
        with pytest.raises(ValidationError) as info:
            InstancesRequest.model_validate(bad)
        assert words in request_error(info.value).message
