"""Local CDN testbed that behaves like CloudFront: origin + per-POP nginx caches + DNS + CA.

Used by the integration tests, the benchmarks, and by users to try the service without AWS::

    with Testbed() as tb:
        os.environ.update(tb.env())
        ...  # warm tb.url("/obj/1kb/a") through every POP

For large objects the origin paces (``/fault/rate/``), stalls (``/fault/stall/``) and answers
Range requests that the edges cache per range; ``origin_sent()`` says what the origin sent and
``Testbed(edge_log=True)`` with ``edge_log()`` what each edge served.

CloudFront's tiers: ``Testbed(tiers="rec")`` puts each POP behind its regional edge cache (the
catalogue's ``recs`` table, or ``rec_of``), ``tiers="shield"`` adds the Origin Shield; ``collapse``,
``cache_errors`` and ``server_timing`` give CloudFront's request collapsing, error caching and
Server-Timing header (details and where nginx differs: ``prewarm.testbed.edges``).

Needs Linux (all of 127.0.0.0/8 on ``lo``), nginx, dnsmasq and openssl, and root (or the right
to bind ports 80/443).
"""

from prewarm.testbed.core import STATE_FILE, Testbed, catalog_pops, catalog_recs, remove_state
from prewarm.testbed.proc import TestbedError

__all__ = ["STATE_FILE", "Testbed", "TestbedError", "catalog_pops", "catalog_recs", "remove_state"]
