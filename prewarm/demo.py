"""The demo behind the README's first command: testbed, local Ray and Serve, one request end to end."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

from prewarm.client import PrewarmClient
from prewarm.models import FINAL_STATUSES

DEMO_POPS = ["ATL56-C1", "SIN2-C1", "DFW55-C3"]


def edge_x_cache(address: str, url: str, ca_file: str) -> str:
    """GET ``url`` through one edge address as a viewer would (Host and SNI = the URL's host)."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    conn = http.client.HTTPSConnection(address, 443, timeout=10, context=context)
    # Connect to the edge's address but verify the certificate against the URL's host (SNI).
    conn.sock = context.wrap_socket(
        socket.create_connection((address, 443), timeout=10), server_hostname=parts.hostname
    )
    try:
        conn.request("GET", parts.path or "/", headers={"Host": parts.hostname or ""})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("X-Cache", "")
    finally:
        conn.close()


def run_demo(port: int = 8000) -> int:
    from prewarm.service import start_service, stop_service
    from prewarm.settings import Settings
    from prewarm.testbed import Testbed

    print("starting the local CDN testbed (nginx edges, dnsmasq, origin) ...", flush=True)
    with Testbed(extra_pops=DEMO_POPS) as testbed:
        os.environ.update(testbed.env())
        print("starting local Ray and Serve ...", flush=True)
        base = start_service(Settings.from_env(), port=port)
        try:
            client = PrewarmClient(base)
            urls = [
                testbed.url("/obj/16kb/index.html"),
                testbed.url("/obj/4kb/css/bootstrap-icons.css"),
                testbed.url("/obj/256kb/img/hero.jpg"),
                testbed.url("/fault/status/404/missing.js"),
            ]
            request = {
                "url_list": urls, "cf_domain": "www.example.com", "target_type": "pop",
                "countries": [], "regions": [], "pops": DEMO_POPS, "timeout": 5, "header": [],
                "instance_count": 1, "need_invalidate": False,
            }
            print(f"POST {base}/prewarm: {len(urls)} URLs x {len(DEMO_POPS)} POPs", flush=True)
            accepted = client.prewarm(request)
            req_id = accepted["request_id"]
            print(f"accepted: request_id={req_id} timeout_at={accepted['timeout_at']}", flush=True)
            while True:
                p = client.progress(req_id)
                print(f"  {p['status']:<11} {p['phase']:<9} {p['download_count']}/{p['total_count']} "
                      f"({p['percentage_complete']}%) ok={p['success_count']} failed={p['failure_count']} "
                      f"bytes={p['download_size']}", flush=True)
                if p["status"] in FINAL_STATUSES:
                    break
                time.sleep(0.5)
            summary = client.summary(req_id)
            print("summary:")
            for key in ("status", "failure_pops", "failure_urls", "failure_pop_urls_report",
                        "success_count", "failure_count"):
                print(f"  {key}: {summary[key]}")
            print("  per POP:")
            for row in summary["pops"]:
                print(f"    {row['pop']:<10} ok={row['success']} failed={row['failure']} bytes={row['bytes']} "
                      f"p50={row['p50_ms']}ms p95={row['p95_ms']}ms")
            print("report CSV:")
            sys.stdout.write(client.report(req_id).decode())
            print("edge caches afterwards (GET through each POP):")
            for pop in DEMO_POPS:
                address = testbed.pop_addresses[pop][0]
                states = [edge_x_cache(address, u, testbed.ca_file) for u in urls[:3]]
                print(f"  {pop:<10} {states}")
            return 0 if summary["status"] == "FINISHED" else 1
        finally:
            stop_service()
