import os
from pathlib import Path

import numpy as np
import pytest

from prewarm.engine.store import Store


def test_jobs_and_results_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save_job("a", {"status": "IN_PROGRESS"}, ["u0", "u1"])
    failed = (1, 404, "", "1.2.3.4", 0, 1, 3.5, "http_404", "nope")
    store.save_results("a", [failed, (0, 200, "Hit", "x", 5, 1, 1.0, "", "")])
    store.save_results("a", [(0, 500, "", "", 0, 3, 0.0, "http_500", "dup")])  # a repeat is ignored
    store.save_results("a", [(np.int64(2), 200, "Miss", "x", 7, 2, 0.5, "", "", "Hit", 3, 1)])  # a numpy task id
    store.save_results("a", [])
    store.save_job("a", {"status": "FINISHED"})
    store.save_job("b", {"status": "IN_PROGRESS"}, ["v0"])
    store.save_results("b", [(0, 200, "Hit", "y", 1, 1, 0.1, "", "")])
    store.close()
    [(req_id, meta, urls, rows), (_, _, _, rows_b)] = list(Store(tmp_path).jobs())
    assert (req_id, meta, urls) == ("a", {"status": "FINISHED"}, ["u0", "u1"])
    assert rows == [(0, 200, "Hit", "x", 5, 1, 1.0, "", "", "", -1, 0),
                    (1, 404, "", "1.2.3.4", 0, 1, 3.5, "http_404", "nope", "", -1, 0),
                    (2, 200, "Miss", "x", 7, 2, 0.5, "", "", "Hit", 3, 1)]
    assert rows_b == [(0, 200, "Hit", "y", 1, 1, 0.1, "", "", "", -1, 0)]  # each job only its own results


def test_every_field_of_a_full_row_survives_the_store(tmp_path: Path) -> None:
    """Rows with the large-object and tier fields come back whole, nested parts included, and rebuild the same
    table counts (a store that kept 12 fields lost wasted bytes, parts, hit layers and origin fetches)."""
    from prewarm.core.results import TaskTable, result_row

    parts = (("bytes=0-3", 206, "Miss", 4, 1, 1.0, "", "", "Hit"),)
    rows = [result_row(0, 206, "Miss", "a", 4, 1, 2.0, verify_x_cache="Hit", wasted=9, size=4, parts=parts,
                       hit_layer="REC", served_by=1),
            result_row(1, 200, "Hit", "a", 0, 1, 1.0, verify_x_cache="Hit", already_warm=True, size=4)]
    store = Store(tmp_path)
    store.save_job("a", {"status": "FINISHED"}, ["u0", "u1"])
    store.save_results("a", rows)
    store.close()
    [(_, _, _, loaded)] = list(Store(tmp_path).jobs())
    live, reloaded = TaskTable(["u0", "u1"], ["P1"]), TaskTable(["u0", "u1"], ["P1"])
    live.record(rows)
    reloaded.record(loaded)
    for name in ("bytes_wasted", "already_warm_count", "origin_fetches", "verified_hit_count", "download_size"):
        assert getattr(reloaded, name) == getattr(live, name), name
    assert reloaded.parts == live.parts and reloaded.hit_layers() == live.hit_layers() == {"REC": 1, "": 1}


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.save_report("r", b"url,pop\n")
    assert store.load_report("r") == b"url,pop\n"

    def crash(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save_report("r", b"url,pop\nhalf")
    assert store.load_report("r") == b"url,pop\n"  # the old file stands whole
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["r.csv"]  # no temp file left


def test_disabled_store_keeps_nothing() -> None:
    store = Store(None)
    store.save_job("a", {}, [])
    store.save_results("a", [])
    assert store.save_report("a", b"x") is None and list(store.jobs()) == []
