"""CloudFront invalidation paths and their batches: pure, no AWS endpoint needed."""

from __future__ import annotations

from prewarm.aws.cloudfront import batch_paths, invalidation_paths


def test_invalidation_paths() -> None:
    urls = [
        "https://a.example.com/x/y.js?v=2", "https://a.example.com/x/y.js?v=2#top", "https://a.example.com/",
        "https://a.example.com", "https://a.example.com/%E2%9C%93.png", "https://a.example.com/caf\u00e9 menu.html",
        "https://a.example.com/a[1]{2}.css", "https://a.example.com/v.mp4?Expires=1&Signature=s&Key-Pair-Id=k",
        "https://a.example.com/s.js?lang=en&Policy=p", "https://a.example.com/100%.txt",
        "https://a.example.com/x/y.js?v=3", "https://a.example.com/X/Y.JS?v=2",
    ]
    assert invalidation_paths(urls) == [
        "/x/y.js?v=2", "/", "/%E2%9C%93.png", "/caf%C3%A9%20menu.html", "/a%5B1%5D%7B2%7D.css", "/v.mp4",
        "/s.js?lang=en", "/100%25.txt", "/x/y.js?v=3", "/X/Y.JS?v=2",
    ]
    assert invalidation_paths(urls[:2] + urls[-2:], keep_query=False) == ["/x/y.js", "/X/Y.JS"]
    long = invalidation_paths(["https://a.example.com/" + "a" * 5000])[0]
    assert len(long) == 4000 and long.endswith("*")


def test_batch_paths() -> None:
    plain = [f"/o/{i}" for i in range(7000)]
    assert [len(b) for b in batch_paths(plain)] == [3000, 3000, 1000]
    assert [p for b in batch_paths(plain) for p in b] == plain
    assert batch_paths([]) == []
    wild = [f"/w{i}/*" for i in range(20)]
    batches = batch_paths(wild + plain[:10])
    assert len(batches) == 2 and [sum(p.endswith("*") for p in b) for b in batches] == [15, 5]
    assert sorted(p for b in batches for p in b) == sorted(wild + plain[:10])
    # 16 wildcards and 2,980 others: the second wildcard batch takes what the first has no room for.
    batches = batch_paths(wild[:16] + plain[:2980])
    assert [len(b) for b in batches] == [2995, 1]
    assert [sum(p.endswith("*") for p in b) for b in batches] == [15, 1]
