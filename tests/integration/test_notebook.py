"""The analysis helpers, and the analysis notebook executed in a real kernel against a job on the testbed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from prewarm import analysis
from prewarm.client import PrewarmClient
from prewarm.testbed import Testbed

from .conftest import SPEC_POPS, request_body, wait_final

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "prewarm_analysis.ipynb"
PLOTS = ("plot_success_rate", "plot_latency", "plot_bytes", "plot_failures", "plot_status_heatmap", "plot_warmth")


@pytest.fixture(scope="module", autouse=True)
def own_ray_cluster() -> Iterator[None]:
    """Make the ``service`` fixture start its own cluster: ray.init() without an address joins any local one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", "local")
        yield


def results_frame() -> pd.DataFrame:
    """A small job: two URLs fine everywhere, one 404 everywhere, one timeout through one POP."""
    rows: list[dict[str, Any]] = []
    for i, url in enumerate(["https://w.example/a", "https://w.example/b", "https://w.example/missing"]):
        for j, pop in enumerate(SPEC_POPS):
            ok = "missing" not in url
            cold = url.endswith("/b") and pop == "SIN2-C1"  # verified a Miss even after one re-warm
            rows.append({"url": url, "pop": pop, "ok": ok, "variant": "", "address": f"127.0.0.{j + 1}",
                         "status_code": 200 if ok else 404, "x_cache": "Miss from cloudfront" if ok else "",
                         "bytes": 1024 * (i + 1) if ok else 0, "attempts": 1, "elapsed_ms": 10.0 * (i + j + 1),
                         "error_class": "" if ok else "http_404", "error_message": "",
                         "verify_x_cache": ("Miss from cloudfront" if cold else "Hit from cloudfront") if ok else "",
                         "age": 0 if ok else None, "rounds": 2 if cold else 1})
    rows.append({"url": "https://w.example/slow", "pop": "SIN2-C1", "ok": False, "variant": "",
                 "address": "127.0.0.2", "status_code": 0, "x_cache": "", "bytes": 0, "attempts": 3,
                 "elapsed_ms": 3000.0, "error_class": "fetch_timeout", "error_message": "timed out",
                 "verify_x_cache": "", "age": None, "rounds": 1})
    return pd.DataFrame(rows, columns=analysis.RESULT_COLUMNS)


def test_pop_table_from_a_frame() -> None:
    table = analysis.pop_table(results_frame())
    assert list(table.index) == SPEC_POPS and list(table.columns) == analysis.POP_TABLE_COLUMNS
    assert table.loc["SIN2-C1", ["tasks", "success", "failure", "bytes"]].tolist() == [4, 2, 2, 3 * 1024]
    assert table.loc["ATL56-C1", "success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert table.loc["ATL56-C1", "p50_ms"] == 15.0  # successful fetches only: 10 and 20 ms
    assert analysis.pop_table(results_frame().iloc[:0]).empty


def test_plots_and_failures_from_a_frame() -> None:
    frame = results_frame()
    for name in PLOTS:
        fig = getattr(analysis, name)(frame)
        assert fig.axes and fig.axes[0].get_title(), name
        empty = getattr(analysis, name)(frame.iloc[:0])
        assert empty.axes, name
    heat = analysis.plot_status_heatmap(frame, max_urls=2)
    assert "first 2 of 4 URLs" in heat.axes[0].get_title()
    labels = [t.get_text() for t in heat.axes[0].get_yticklabels()]
    assert set(labels) == {"/missing", "/slow"}  # failing URLs first
    failed = analysis.failures(frame)
    assert list(failed["error_class"]) == ["http_404"] * 3 + ["fetch_timeout"]
    assert [analysis.status_class(c) for c in (200, 304, 404, 503, 0)] == [1, 2, 3, 4, 0]


def test_warmth_from_a_frame() -> None:
    frame = results_frame()
    table = analysis.warmth_table(frame)
    assert list(table.index) == SPEC_POPS and list(table.columns) == analysis.WARMTH_COLUMNS
    assert table.loc["SIN2-C1"].tolist() == [2, 2, 1, 1, 0.5, 1]
    assert table.loc["ATL56-C1"].tolist() == [2, 2, 2, 0, 1.0, 0]
    cold = analysis.cold_pairs(frame)
    assert cold[["url", "pop", "verify_x_cache", "rounds"]].values.tolist() == [
        ["https://w.example/b", "SIN2-C1", "Miss from cloudfront", 2]]
    bars = analysis.plot_warmth(frame).axes[0]
    assert [round(b.get_height(), 1) for b in bars.patches] == [100.0, 50.0, 100.0]

    # Not verified (verify: false): no ratio, nothing cold, and the plot says why it is empty.
    unverified = frame.assign(verify_x_cache="")
    assert analysis.warmth_table(unverified)["warm_ratio"].isna().all() and analysis.cold_pairs(unverified).empty
    assert not analysis.plot_warmth(unverified).axes[0].patches

    # Two variants: one row per (POP, variant); the plot folds the variants back into their POP.
    br = frame.assign(variant="Accept-Encoding: br", verify_x_cache=frame["verify_x_cache"].replace(
        "Hit from cloudfront", "RefreshHit from cloudfront"))
    both = pd.concat([frame.assign(variant="Accept-Encoding: gzip"), br], ignore_index=True)
    table = analysis.warmth_table(both)
    assert table.index.names == ["pop", "variant"] and len(table) == 2 * len(SPEC_POPS)
    assert table.loc[("SIN2-C1", "Accept-Encoding: br"), "hits"] == 1  # RefreshHit is a Hit
    assert [round(b.get_height(), 1) for b in analysis.plot_warmth(both).axes[0].patches] == [100.0, 50.0, 100.0]


def test_warmth_shows_which_tier_holds_the_pairs() -> None:
    frame = results_frame()
    verified = frame["verify_x_cache"].ne("")
    layers = ["EDGE" if i % 3 else "REC" for i in range(len(frame))]
    table = analysis.warmth_table(frame.assign(hit_layer=[x if v else "" for x, v in zip(layers, verified,
                                                                                     strict=True)]))
    assert list(table.columns) == [*analysis.WARMTH_COLUMNS, "held_EDGE", "held_REC"]
    assert (table["held_EDGE"] + table["held_REC"]).tolist() == table["verified"].tolist()


def test_jobs_frame_sorts_newest_first() -> None:
    rows = [{"request_id": "old", "created_at": "2024-04-16 03:10:21.405303", "status": "FINISHED"},
            {"request_id": "new", "created_at": "2024-04-16 03:12:21.046535", "status": "IN_PROGRESS"}]
    jobs = analysis.jobs_frame(rows)
    assert list(jobs["request_id"]) == ["new", "old"] and analysis.newest_job(jobs) == "new"
    assert str(jobs["created_at"].dt.tz) == "UTC"
    with pytest.raises(LookupError):
        analysis.newest_job(analysis.jobs_frame([]))


def outputs(cell: Any) -> list[dict[str, Any]]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") in ("execute_result", "display_data")]


def test_notebook_runs_against_a_real_job(service: PrewarmClient, cdn: Testbed, tmp_path: Path) -> None:
    import ray
    from jupyter_client.kernelspec import KernelSpecManager

    cdn.reset()
    ok = [cdn.url(f"/obj/{size}/nb/{i}.css") for i, size in enumerate(("1kb", "2kb", "4kb", "8kb"))]
    missing = cdn.url("/fault/status/404/nb/missing.js")
    req_id = service.prewarm(request_body([*ok, missing]))["request_id"]
    assert wait_final(service, req_id)["status"] == "FINISHED"

    # The kernel must be this venv's Python ("python" in a kernelspec means the launching interpreter).
    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    assert argv0 in ("python", sys.executable) or Path(argv0).resolve() == Path(sys.executable).resolve()

    context = ray.get_runtime_context()
    # Like a notebook started from a fresh shell: no RAY_AUTH_MODE inherited from this process (Ray set it
    # when it started the cluster); analysis.connect has to find the cluster's token by itself.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    # The cluster is local: reach its GCS on loopback whatever node address Ray picked.
    gcs_port = context.gcs_address.rsplit(":", 1)[1]
    env.update({"PREWARM_RAY_ADDRESS": f"127.0.0.1:{gcs_port}", "PREWARM_NAMESPACE": context.namespace})
    env.pop("PREWARM_REQ_ID", None)  # REQ_ID None: the notebook picks the newest job, which is ours

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env=env)  # raises CellExecutionError naming the cell if any cell fails
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # for a look when it fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    texts = "\n".join(o.get("text", "") for c in code for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert f"job {req_id}: 15 finished (URL, POP) tasks, 3 failed" in texts

    table_cell = next(c for c in code if "pop_table(results)" in c.source)
    html = outputs(table_cell)[0]["data"]["text/html"]
    assert "success_rate" in html and all(pop in html for pop in SPEC_POPS)
    for name in PLOTS:
        cell = next(c for c in code if f"analysis.{name}(" in c.source)
        assert [o for o in outputs(cell) if "image/png" in o["data"]], name
    # Verified warm: every one of the 12 successes (4 URLs x 3 POPs) answered a Hit to its verification HEAD.
    warmth = outputs(next(c for c in code if "warmth_table(results)" in c.source))[0]["data"]["text/plain"]
    warmth_rows = {line.split()[0]: line.split()[1:] for line in warmth.splitlines()[2:]}
    # ... and every verified pair was held at the edge itself (Server-Timing's cdn-hit-layer EDGE)
    assert "held_EDGE" in warmth.splitlines()[0]
    assert warmth_rows == {pop: ["4", "4", "4", "0", "1.0", "0", "4"] for pop in SPEC_POPS}, warmth
    cold = outputs(next(c for c in code if "cold_pairs(results)" in c.source))[0]["data"]["text/plain"]
    assert cold.startswith("Empty DataFrame"), cold
    jobs_cell = next(c for c in code if "analysis.list_jobs()" in c.source)
    assert req_id in outputs(jobs_cell)[0]["data"]["text/plain"]
