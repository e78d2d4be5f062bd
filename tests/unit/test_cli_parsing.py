"""The CLI's argument, header, URL-list and sitemap parsing, and the progress output: no network, no Ray."""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import pytest

from prewarm.cli.commands import (
    EXIT_ERROR,
    UsageError,
    build_parser,
    build_request,
    collect_urls,
    infer_target_type,
    job_exit_code,
    main,
    parse_header,
    read_url_lines,
    split_list,
)
from prewarm.cli.progressbar import ProgressBar, format_summary, human_bytes, human_duration, render
from prewarm.cli.sitemap import SitemapError, decompress, load_sitemap, parse_sitemap, resolve_nested

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(*urls: str) -> bytes:
    body = "".join(f"<url><loc> {u} </loc><lastmod>2024-01-01</lastmod></url>" for u in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset {NS}>{body}</urlset>'.encode()


def index(*locs: str) -> bytes:
    body = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f"<sitemapindex {NS}>{body}</sitemapindex>".encode()


def parse_submit(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(["submit", *argv])
    args.pops, args.regions, args.countries = (split_list(args.pops), split_list(args.regions),
                                               split_list(args.countries))
    return args


# -- arguments ---------------------------------------------------------------------------------------


def test_submit_defaults_shape_the_spec_request() -> None:
    args = parse_submit("https://a.example/x", "--pops", "ATL56-C1,SIN2-C1", "--pops", " DFW55-C3 ")
    assert build_request(args, ["https://a.example/x"]) == {
        "url_list": ["https://a.example/x"], "cf_domain": None, "target_type": "pop",
        "pops": ["ATL56-C1", "SIN2-C1", "DFW55-C3"], "regions": [], "countries": [], "timeout": 30.0,
        "header": [], "instance_count": 1, "need_invalidate": False,
    }
    assert (args.watch, args.json, args.url, args.api_key) == (False, False, None, None)


def test_submit_options() -> None:
    args = parse_submit("--regions", "apac,jp", "--timeout", "0.5", "--instance-count", "3", "--invalidate",
                        "-H", "X-A:1", "--header", "Authorization:  Bearer t ", "--cf-domain", "d1.cloudfront.net",
                        "--watch", "--json", "--url", "http://127.0.0.1:9", "--api-key", "k")
    body = build_request(args, ["https://a.example/x"])
    assert body["target_type"] == "region" and body["regions"] == ["apac", "jp"]
    assert (body["timeout"], body["instance_count"], body["need_invalidate"]) == (0.5, 3, True)
    assert body["header"] == ["X-A: 1", "Authorization: Bearer t"]
    assert body["cf_domain"] == "d1.cloudfront.net"
    assert (args.watch, args.json, args.url, args.api_key) == (True, True, "http://127.0.0.1:9", "k")


def test_warming_options_are_sent_only_when_given() -> None:
    args = parse_submit("--no-verify", "--until-hit", "2", "--variant", "Accept-Encoding: gzip", "--variant",
                        "Accept-Encoding:br", "--callback-url", "https://hooks.example/x", "--max-rps", "50")
    body = build_request(args, ["https://a.example/x"])
    assert (body["verify"], body["until_hit"], body["max_rps"]) == (False, 2, 50.0)
    assert body["variants"] == [{"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"}]
    assert body["callback_url"] == "https://hooks.example/x"
    plain = build_request(parse_submit("x"), ["x"])
    assert not {"verify", "until_hit", "variants", "callback_url", "max_rps"} & set(plain)


def test_expand_options() -> None:
    body = build_request(parse_submit("--expand", "--first-seconds", "30", "--max-bandwidth", "2000000", "x"), ["x"])
    assert (body["expand"], body["expand_first_seconds"], body["expand_max_bandwidth"]) == (True, 30.0, 2_000_000)
    assert "expand" not in build_request(parse_submit("x"), ["x"])
    with pytest.raises(UsageError, match="--expand"):
        build_request(parse_submit("--first-seconds", "30", "x"), ["x"])


def test_retry_command_builds_a_retry_request() -> None:
    args = build_parser().parse_args(["retry", "8c2b8bde-1fd6-4f7e-9b57-16e1c4c3a3d7", "--timeout", "3",
                                      "--until-hit", "1", "--watch"])
    assert (args.req_id, args.timeout, args.until_hit, args.watch) == (
        "8c2b8bde-1fd6-4f7e-9b57-16e1c4c3a3d7", 3.0, 1, True)
    assert args.instance_count is None and not hasattr(args, "variant")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), "pop"),
        (("--pops", "ATL56-C1"), "pop"),
        (("--regions", "eu"), "region"),
        (("--countries", "india"), "country"),
        (("--target-type", "region"), "region"),
        (("--target-type", "country", "--countries", "japan"), "country"),
    ],
)
def test_target_type_is_inferred(argv: tuple[str, ...], expected: str) -> None:
    assert infer_target_type(parse_submit(*argv)) == expected


@pytest.mark.parametrize(
    "argv",
    [("--pops", "ATL56-C1", "--regions", "eu"), ("--target-type", "pop", "--countries", "india")],
)
def test_conflicting_targets_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        infer_target_type(parse_submit(*argv))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("X-Test: yes", "X-Test: yes"), ("X-Test:yes", "X-Test: yes"), (" Accept :  a:b ", "Accept: a:b"),
     ("X-Empty:", "X-Empty: ")],
)
def test_header_parsing(raw: str, expected: str) -> None:
    assert parse_header(raw) == expected


@pytest.mark.parametrize("raw", ["no colon", ": value", "Bad Name: v", "X-A: a\r\nX-B: b"])
def test_bad_headers_are_rejected(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_header(raw)


def test_bad_header_is_a_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["submit", "https://a.example/x", "-H", "nocolon"])
    assert exc.value.code == 2
    assert "Name: Value" in capsys.readouterr().err


def test_no_urls_exit_2_without_calling_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--url", "http://127.0.0.1:9"]) == EXIT_ERROR
    assert "no URLs" in capsys.readouterr().err


def test_remote_options_on_every_client_command() -> None:
    parser = build_parser()
    for argv in (["status", "r"], ["summary", "r"], ["report", "r"], ["stop", "r"], ["instances"], ["submit"]):
        args = parser.parse_args([*argv, "--url", "http://127.0.0.1:1", "--api-key", "k"])
        assert (args.url, args.api_key) == ("http://127.0.0.1:1", "k")


def test_split_list() -> None:
    assert split_list(["a,b", " c ", ",,", "d, e"]) == ["a", "b", "c", "d", "e"]
    assert split_list(None) == []


def test_url_lines_skip_blanks_and_comments() -> None:
    text = "# header\n\nhttps://a.example/1\n  https://a.example/2  # trailing\n\t\n#https://skipped\n"
    assert read_url_lines(io.StringIO(text)) == ["https://a.example/1", "https://a.example/2"]


def test_collect_urls_from_args_files_stdin_and_sitemaps(tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text("https://a.example/2\nhttps://a.example/3\n")
    sitemap = tmp_path / "sitemap.xml"
    sitemap.write_bytes(urlset("https://a.example/3", "https://a.example/5"))
    args = parse_submit("https://a.example/1", "https://a.example/2", "--file", str(listing), "--file", "-",
                        "--sitemap", str(sitemap))
    got = collect_urls(args, stdin=io.StringIO("https://a.example/4\n# x\n"))
    assert got == [f"https://a.example/{i}" for i in (1, 2, 3, 4, 5)]


def test_collect_urls_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no URLs"):
        collect_urls(parse_submit("--file", "-"), stdin=io.StringIO("# nothing\n"))
    with pytest.raises(UsageError, match="--file"):
        collect_urls(parse_submit("--file", str(tmp_path / "missing.txt")))
    with pytest.raises(UsageError, match="--sitemap"):
        collect_urls(parse_submit("--sitemap", str(tmp_path / "missing.xml")))


def test_job_exit_code() -> None:
    assert job_exit_code({"status": "FINISHED", "failure_count": 0}) == 0
    assert job_exit_code({"status": "FINISHED", "failure_count": 1}) == 1
    assert job_exit_code({"status": "TIMEOUT", "failure_count": 0}) == 1
    assert job_exit_code({"status": "STOPPED", "failure_count": 3}) == 1


# -- sitemaps -----------------------------------------------------------------------------------------


def test_parse_urlset_index_text_and_gzip() -> None:
    assert parse_sitemap(urlset("https://a.example/1", "https://a.example/2")) == (
        "urlset", ["https://a.example/1", "https://a.example/2"])
    assert parse_sitemap(gzip.compress(index("s1.xml", "https://a.example/s2.xml.gz"))) == (
        "sitemapindex", ["s1.xml", "https://a.example/s2.xml.gz"])
    assert parse_sitemap(b"<urlset><url><loc>https://a.example/n</loc></url><url/></urlset>") == (
        "urlset", ["https://a.example/n"])
    assert parse_sitemap(b"\xef\xbb\xbfhttps://a.example/t1\n\nhttps://a.example/t2\n") == (
        "text", ["https://a.example/t1", "https://a.example/t2"])


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"<urlset><url>", "not valid XML"), (b"<rss></rss>", "expected <urlset>"),
     (b"\x1f\x8b\x08garbage", "gzip")],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(SitemapError, match=message):
        parse_sitemap(data)


def test_decompression_is_capped() -> None:
    bomb = gzip.compress(b"<" + b" " * 10_000)
    with pytest.raises(SitemapError, match="larger than"):
        decompress(bomb, limit=1000)
    assert decompress(b"<urlset/>") == b"<urlset/>"


def test_nested_sitemaps_from_local_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.xml.gz").write_bytes(gzip.compress(urlset("https://a.example/b1", "https://a.example/a1")))
    (tmp_path / "a.xml").write_bytes(urlset("https://a.example/a1", "https://a.example/a2"))
    (tmp_path / "inner.xml").write_bytes(index("sub/b.xml.gz", "inner.xml"))  # lists itself: read once
    (tmp_path / "index.xml").write_bytes(index("a.xml", str(tmp_path / "inner.xml")))
    assert load_sitemap(str(tmp_path / "index.xml")) == [
        "https://a.example/a1", "https://a.example/a2", "https://a.example/b1"]
    assert load_sitemap((tmp_path / "index.xml").as_uri()) == load_sitemap(str(tmp_path / "index.xml"))


def test_depth_and_count_caps() -> None:
    docs = {f"mem:{i}": index(f"mem:{i + 1}") for i in range(10)}
    with pytest.raises(SitemapError, match="deeper than 3"):
        load_sitemap("mem:0", reader=docs.__getitem__)
    wide = {"mem:root": index(*(f"https://a.example/s{i}.xml" for i in range(20)))}
    wide.update({f"https://a.example/s{i}.xml": urlset(f"https://a.example/{i}") for i in range(20)})
    with pytest.raises(SitemapError, match="more than 5 sitemaps"):
        load_sitemap("mem:root", reader=wide.__getitem__, max_sitemaps=5)
    assert len(load_sitemap("mem:root", reader=wide.__getitem__)) == 20


def test_nested_locations_resolve_against_their_index() -> None:
    assert resolve_nested("https://a.example/maps/index.xml", "part.xml") == "https://a.example/maps/part.xml"
    assert resolve_nested("https://a.example/index.xml", "https://b.example/p.xml") == "https://b.example/p.xml"
    assert resolve_nested("/srv/maps/index.xml", "p/part.xml.gz") == "/srv/maps/p/part.xml.gz"
    assert resolve_nested("/srv/maps/index.xml", "https://b.example/p.xml") == "https://b.example/p.xml"
    with pytest.raises(SitemapError, match="not an http"):
        resolve_nested("https://a.example/index.xml", "file:///etc/passwd")


def test_missing_local_sitemap_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(SitemapError, match=r"missing\.xml"):
        load_sitemap(str(tmp_path / "missing.xml"))


# -- progress bar and summary ---------------------------------------------------------------------------


def progress(done: int, total: int = 600, status: str = "IN_PROGRESS", failed: int = 0) -> dict[str, object]:
    return {"status": status, "phase": "fetching", "total_count": total, "download_count": done,
            "download_size": done * 2048, "failure_count": failed}


def test_render_line() -> None:
    line = render(progress(150, failed=2), rate=50.0, width=10)
    assert line.startswith("[##........] 150/600  25% 50.0/s 300.0 KiB failed=2 ETA 0:00:09")
    assert line.endswith("IN_PROGRESS/fetching")
    assert "ETA --:--" in render(progress(0), rate=None)
    assert render(progress(0, total=0, status="FINISHED"), rate=None).startswith("[" + "#" * 24 + "]")


def test_render_goes_by_bytes_once_the_size_is_known() -> None:
    mib = 1024 * 1024
    large = {**progress(1, total=4), "total_size": 400 * mib, "bytes_received": 110 * mib,
             "bytes_wasted": 10 * mib, "byte_rate": 20 * mib}
    line = render(large, rate=None, width=10)
    assert line.startswith("[##........] 100.0/400.0 MiB  25% 20.0 MiB/s 1/4 failed=0 wasted=10.0 MiB ETA 0:00:15")
    measured = render({**large, "byte_rate": 0.0}, rate=None, byte_rate=10 * mib)  # the service sent no rate
    assert "10.0 MiB/s" in measured and "ETA 0:00:30" in measured
    assert "MiB/s" not in render({**large, "status": "FINISHED"}, rate=None)  # the end is shown by tasks


def test_summary_text_shows_the_byte_side() -> None:
    text = format_summary({"request_id": "r", "status": "FINISHED", "success_count": 4, "failure_count": 0,
                           "download_size": 3 * 1024**3, "byte_rate": 50 * 1024**2, "bytes_wasted": 1024**2,
                           "already_warm_count": 2})
    assert "already warm: 2 pairs" in text
    assert "downloaded 3.0 GiB at 50.0 MiB/s; 1.0 MiB wasted by bodies cut short" in text


def test_submit_builds_the_large_object_fields() -> None:
    body = build_request(parse_submit("x", "--max-bytes-per-s", "5000000", "--skip-warm"), ["x"])
    assert body["max_bytes_per_s"] == 5e6 and body["skip_warm"] is True
    plain = build_request(parse_submit("x"), ["x"])
    assert "max_bytes_per_s" not in plain and "skip_warm" not in plain


def test_human_units() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**3)] == ["0 B", "1023 B", "1.5 KiB", "5.0 GiB"]
    assert (human_duration(3725), human_duration(None), human_duration(float("inf"))) == ("1:02:05", "--:--",
                                                                                         "--:--")


def test_bar_redraws_in_place_on_a_tty() -> None:
    stream, now = io.StringIO(), [0.0]
    bar = ProgressBar(stream, tty=True, clock=lambda: now[0])
    for done in (0, 100, 200):
        bar.update(progress(done))
        now[0] += 1
    bar.close(progress(600, status="FINISHED"))
    out = stream.getvalue()
    assert out.count("\r") == 4 and out.count("\n") == 1 and out.endswith("\n")
    assert "200/600" in out and "100.0/s" in out and "600/600 100%" in out


def test_bar_logs_one_line_every_few_seconds_otherwise() -> None:
    stream, now = io.StringIO(), [0.0]
    bar = ProgressBar(stream, tty=False, log_interval_s=5, clock=lambda: now[0])
    for done in range(0, 120, 10):  # 12 updates, one a second
        bar.update(progress(done))
        now[0] += 1
    bar.close(progress(600, status="FINISHED"))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in lines] == ["0/600", "50/600", "100/600", "600/600"]


def test_summary_table() -> None:
    text = format_summary({
        "request_id": "r1", "status": "FINISHED", "success_count": 5, "failure_count": 1,
        "failure_pops": ["ZZZ9-C9"], "failure_urls": [f"https://a.example/{i}" for i in range(25)],
        "failure_pop_urls_report": "http://127.0.0.1:8000/reports/r1.csv",
        "pops": [{"pop": "ATL56-C1", "success": 5, "failure": 1, "bytes": 4096, "p50_ms": 1.25, "p95_ms": None}],
    })
    lines = text.splitlines()
    assert lines[0] == "request r1: FINISHED, 5 succeeded, 1 failed"
    header = next(line for line in lines if line.startswith("POP"))
    row = next(line for line in lines if line.startswith("ATL56-C1"))
    assert header.split() == ["POP", "success", "failure", "bytes", "p50", "ms", "p95", "ms"]
    assert row.split() == ["ATL56-C1", "5", "1", "4.0", "KiB", "1.2", "-"]
    assert "failed POPs: ZZZ9-C9" in text and "... and 5 more" in text
    assert lines[-1] == "report: http://127.0.0.1:8000/reports/r1.csv"


def test_summary_shows_verification_cold_pairs_and_webhook() -> None:
    cold = [{"url": f"https://a.example/{i}", "pop": "ATL56-C1", "variant": "Accept-Encoding: br" if i == 0 else "",
             "x_cache": "Miss from cloudfront"} for i in range(22)]
    text = format_summary({
        "request_id": "r2", "status": "FINISHED", "success_count": 30, "failure_count": 0, "pops": [],
        "verified_hit_count": 8, "warm_ratio": 8 / 30, "cold_pairs": cold, "cold_pair_count": 22,
        "webhook": {"url": "https://hooks.example/x", "attempts": 2, "delivered": True, "last_status": 200,
                    "last_error": "HTTP 500 on attempt 1"},
    })
    lines = text.splitlines()
    assert "verified warm: 8 of 30 successful pairs answered a Hit afterwards (warm_ratio 0.267)" in lines
    assert "cold pairs (22):" in lines
    assert "  ATL56-C1  https://a.example/0 [Accept-Encoding: br]: Miss from cloudfront" in lines
    assert "  ATL56-C1  https://a.example/19: Miss from cloudfront" in lines
    assert "https://a.example/20" not in text and "  ... and 2 more" in lines
    assert lines[-1] == "webhook https://hooks.example/x: delivered (HTTP 200) after 2 attempt(s)"


def test_summary_without_verification_says_nothing_of_it() -> None:
    text = format_summary({"request_id": "r3", "status": "FINISHED", "success_count": 3, "failure_count": 0,
                           "warm_ratio": None, "verified_hit_count": 0,
                           "webhook": {"url": "https://h.example/", "attempts": 5, "delivered": False,
                                       "gave_up": True, "last_error": "timeout"}})
    assert "verified" not in text and "cold pairs" not in text
    assert text.splitlines()[-1] == "webhook https://h.example/: gave up after 5 attempt(s), last error: timeout"
