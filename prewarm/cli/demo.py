"""The demo behind the README's first command: testbed, local Ray and Serve, one request end to end."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
from urllib.parse import urlsplit

from prewarm.cli.progressbar import format_summary, watch
from prewarm.client import PrewarmClient

DEMO_POPS = ["ATL56-C1", "SIN2-C1", "DFW55-C3"]
DEMO_ASSETS = 200  # enough (URL, POP) pairs that the progress bar has something to show
SIZES = ("1kb", "2kb", "4kb", "8kb", "16kb", "32kb")
KINDS = (("css", "css"), ("js", "js"), ("img", "png"), ("img", "jpg"), ("fonts", "woff2"))
MISSING_PATH = "/fault/status/404/missing.js"  # one URL the origin does not have: shows a failure row


def demo_paths(count: int = DEMO_ASSETS) -> list[str]:
    """The spec example's two pages, then small static assets of mixed sizes, then one 404."""
    paths = ["/obj/16kb/index.html", "/obj/4kb/css/bootstrap-icons.css"]
    for i in range(count - len(paths)):
        folder, ext = KINDS[i % len(KINDS)]
        paths.append(f"/obj/{SIZES[i % len(SIZES)]}/{folder}/asset-{i:03d}.{ext}")
    return [*paths, MISSING_PATH]


def edge_x_cache(address: str, url: str, ca_file: str, accept_encoding: str = "gzip, deflate, br") -> str:
    """GET ``url`` through one edge address as a viewer would (Host and SNI = the URL's host).

    A browser's Accept-Encoding by default: the edges' cache key holds its normalised form.
    """
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    conn = http.client.HTTPSConnection(address, 443, timeout=10, context=context)
    # Connect to the edge's address but verify the certificate against the URL's host (SNI).
    conn.sock = context.wrap_socket(
        socket.create_connection((address, 443), timeout=10), server_hostname=parts.hostname
    )
    try:
        conn.request("GET", parts.path or "/", headers={"Host": parts.hostname or "",
                                                         "Accept-Encoding": accept_encoding})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("X-Cache", "")
    finally:
        conn.close()


def run_demo(port: int = 8000) -> int:
    """Run the demo; 0 when the job FINISHED (the planted 404 is expected to fail, and is shown)."""
    from prewarm.cli.quiet import ray_log_file, ray_writes_to, send_ray_output_to
    from prewarm.settings import Settings
    from prewarm.testbed import Testbed

    print("starting the local CDN testbed (nginx edges, dnsmasq, origin) ...", flush=True)
    with Testbed(extra_pops=DEMO_POPS) as testbed:
        os.environ.update(testbed.env())
        settings = Settings.from_env()
        log_path = ray_log_file(settings.state_dir, "demo")
        print(f"starting local Ray and Serve (their lines go to {log_path}) ...", flush=True)
        sink = send_ray_output_to(log_path)
        with ray_writes_to(sink):
            from prewarm.api.service import start_service, stop_service

            base = start_service(settings, port=port)
        try:
            client = PrewarmClient(base)
            urls = [testbed.url(p) for p in demo_paths()]
            request = {
                "url_list": urls, "cf_domain": "www.example.com", "target_type": "pop",
                "countries": [], "regions": [], "pops": DEMO_POPS, "timeout": 5, "header": [],
                "instance_count": 1, "need_invalidate": False,
            }
            print(f"POST {base}/prewarm: {len(urls)} URLs x {len(DEMO_POPS)} POPs "
                  f"(one of them, {MISSING_PATH}, is missing at the origin on purpose)", flush=True)
            accepted = client.prewarm(request)
            req_id = accepted["request_id"]
            print(f"accepted: request_id={req_id} timeout_at={accepted['timeout_at']}", flush=True)
            sys.stdout.flush()
            progress = watch(client, req_id, stream=sys.stderr, poll_s=0.25, deadline_s=5 * 60 + 60)
            summary = client.summary(req_id)
            print("\nsummary:")
            print(format_summary(summary))
            print("\nreport CSV:")
            sys.stdout.write(client.report(req_id).decode())
            print("\nedge caches afterwards (GET through each POP, X-Cache of the first three URLs):")
            for pop in DEMO_POPS:
                address = testbed.pop_addresses[pop][0]
                states = [edge_x_cache(address, u, testbed.ca_file) for u in urls[:3]]
                print(f"  {pop:<10} {states}")
            return 0 if progress["status"] == "FINISHED" else 1
        finally:
            with ray_writes_to(sink):
                stop_service()
