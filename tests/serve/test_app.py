"""The search service's API (FastAPI TestClient over httpx) on a real trained, indexed run."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aepipe.index.search import Searcher


@pytest.fixture(scope="module")
def client(trained_run):
    from fastapi.testclient import TestClient

    from aepipe.serve.app import create_app
    from aepipe.serve.service import SearchService

    with TestClient(create_app(SearchService(trained_run.run_dir)), raise_server_exceptions=False) as c:
        yield c


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_info(client, trained_run):
    assert client.get("/api/health").json() == {"status": "ok", "model_id": trained_run.model_id}
    info = client.get("/api/info").json()
    assert info["model_id"] == trained_run.model_id and info["index_type"] == "Flat" and info["kind"] == "images"
    assert info["n_items"] == trained_run.n_items and info["dim"] == 10 and info["recall_at_10"] == 1.0
    assert info["labels"] == [str(d) for d in range(10)] and "generation" in info


def test_search_by_ids_matches_the_library_and_reports_unknown_ids(client, trained_run):
    r = client.post("/api/search/ids", json={"ids": ["0003", "nope", "0010"], "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["errors"] == [{"id": "nope", "error": "id not in the store"}]
    expected = Searcher(trained_run.run_dir).search_ids(["0003", "0010"], 5)
    assert [res["query"] for res in body["results"]] == ["0003", "0010"]
    assert [[h["id"] for h in res["hits"]] for res in body["results"]] == [[h.id for h in hits] for hits in expected]
    assert body["model_id"] == trained_run.model_id
    # the published generation that answered, as /api/info names it (the page shows it)
    assert body["generation"] is not None and body["generation"] == client.get("/api/info").json()["generation"]


def test_only_unknown_ids_is_a_404(client):
    r = client.post("/api/search/ids", json={"ids": ["nope"], "k": 5})
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_label_filter_keeps_k_hits_of_that_label(client):
    body = client.post("/api/search/ids", json={"ids": ["0003"], "k": 8, "label": "7"}).json()
    hits = body["results"][0]["hits"]
    assert len(hits) == 8 and {h["label"] for h in hits} == {"7"} and [h["rank"] for h in hits] == list(range(1, 9))


def test_search_by_vector_and_wrong_dimension(client, trained_run):
    s = Searcher(trained_run.run_dir)
    v = s.vectors_for_ids(["0042"])
    body = client.post("/api/search/vectors", json={"vectors": v.tolist(), "k": 3}).json()
    assert body["results"][0]["hits"][0]["id"] == "0042"
    r = client.post("/api/search/vectors", json={"vectors": [[0.0, 1.0]], "k": 3})
    assert r.status_code == 422 and "dimension" in r.json()["error"]
    r = client.post("/api/search/vectors", json={"vectors": [[0.0] * 10, [0.0] * 9]})
    assert r.status_code == 422
    r = client.post("/api/search/vectors", json={"vectors": "x"})
    assert r.status_code == 422 and r.json()["error"].startswith("vectors")
    r = client.post("/api/search/vectors", content=b'{"vectors": [[1.0,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]


def test_bulk_vectors_as_arrays_match_the_hit_records(client, trained_run):
    """format=arrays: (n, k) ids and distances, the same neighbours as the hit records."""
    v = Searcher(trained_run.run_dir).vectors_for_ids(["0042", "0007", "0100"]).tolist()
    hits = client.post("/api/search/vectors", json={"vectors": v, "k": 4}).json()
    arrays = client.post("/api/search/vectors", json={"vectors": v, "k": 4, "format": "arrays"}).json()
    assert arrays["model_id"] == hits["model_id"] and "results" not in arrays
    assert arrays["ids"] == [[h["id"] for h in r["hits"]] for r in hits["results"]]
    assert np.allclose(arrays["distances"], [[h["distance"] for h in r["hits"]] for r in hits["results"]], atol=1e-5)
    r = client.post("/api/search/vectors", json={"vectors": v, "format": "arrays", "label": "7"})
    assert r.status_code == 400 and "label" in r.json()["error"]
    r = client.post("/api/search/vectors", json={"vectors": [[0.0, 1.0]], "format": "arrays"})
    assert r.status_code == 422 and "dimension" in r.json()["error"]
    r = client.post("/api/search/vectors", json={"vectors": v, "format": "csv"})
    assert r.status_code == 422


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_bulk_npy_query_is_answered_as_arrow_with_the_same_neighbours(client, trained_run):
    """A .npy body (application/x-npy) gets an Arrow IPC stream: one row per query, ids and
    distances as lists of k, the same as the JSON arrays; the model and generation travel along."""
    import pyarrow as pa

    v = Searcher(trained_run.run_dir).vectors_for_ids(["0042", "0007", "0100"])
    arrays = client.post("/api/search/vectors", json={"vectors": v.tolist(), "k": 4, "format": "arrays"}).json()
    r = client.post(
        "/api/search/vectors?k=4", content=_npy(v.astype(np.float64)), headers={"content-type": "application/x-npy"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column("ids").to_pylist() == arrays["ids"]
    assert np.allclose(table.column("distances").to_pylist(), arrays["distances"], atol=1e-5)
    assert table.schema.metadata[b"model_id"].decode() == arrays["model_id"] == r.headers["x-aepipe-model-id"]
    assert r.headers["x-aepipe-generation"] == (arrays["generation"] or "")


@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"not a npy file", 400, "not a .npy"),
        (_npy(np.zeros(10, np.float32)), 400, "2-D"),
        (_npy(np.array([["a", "b"]])), 400, "numeric"),
        (_npy(np.zeros((2, 3), np.float32)), 422, "dimension"),
        (_npy(np.full((1, 10), np.nan, np.float32)), 400, "NaN"),
        (_npy(np.zeros((10_001, 2), np.float32)), 413, "at most"),
        (_npy(np.array([{"x": 1}], dtype=object)), 400, "not a .npy"),  # pickled objects are refused
    ],
)
def test_bad_npy_bodies_are_4xx(client, body, status, words):
    r = client.post("/api/search/vectors", content=body, headers={"content-type": "application/x-npy"})
    assert r.status_code == status and words in r.json()["error"], r.text


def test_npy_query_k_is_checked(client, trained_run):
    v = Searcher(trained_run.run_dir).vectors_for_ids(["0042"])
    r = client.post("/api/search/vectors?k=0", content=_npy(v), headers={"content-type": "application/x-npy"})
    assert r.status_code == 400 and "k must be" in r.json()["error"]


def test_search_by_uploaded_image_equals_search_by_file(client, trained_run, digits_x, tmp_path):
    arr = (digits_x[7, 0] * 255).round()
    (tmp_path / "q.png").write_bytes(_png(arr))
    r = client.post("/api/search/images", files=[("files", ("q.png", _png(arr), "image/png"))], data={"k": "4"})
    assert r.status_code == 200, r.text
    expected = Searcher(trained_run.run_dir).search_images([tmp_path / "q.png"], 4)[0]
    assert [h["id"] for h in r.json()["results"][0]["hits"]] == [h.id for h in expected]
    assert r.json()["results"][0]["query"] == "q.png"


def test_bad_uploads_are_4xx_never_500(client):
    r = client.post("/api/search/images", files=[("files", ("x.png", b"not an image at all", "image/png"))])
    assert r.status_code == 400 and "not a usable image" in r.json()["error"]
    big = b"\x89PNG" + b"0" * (5 * 2**20)
    r = client.post("/api/search/images", files=[("files", ("big.png", big, "image/png"))])
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = client.post("/api/search/images", data={"k": "3"})
    assert r.status_code == 422
    r = client.post("/api/search/text", json={"texts": ["event loop"]})
    assert r.status_code == 400 and "trained on images" in r.json()["error"]
    r = client.post("/api/search/ids", json={"ids": ["0003"], "k": 0})
    assert r.status_code == 400 and "k must be" in r.json()["error"]
    r = client.post("/api/search/ids", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_item_metadata_and_thumbnail(client):
    meta = client.get("/api/items/0005").json()
    assert meta["id"] == "0005" and meta["label"] == "5" and meta["source"] == "digits[5]"
    r = client.get("/api/items/0005/thumbnail.png?size=64")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    assert client.get("/api/items/nope").status_code == 404
    assert client.get("/api/items/nope/thumbnail.png").status_code == 404


def test_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="results"' in r.text and "/api/search/ids" in r.text


def test_refresh_moves_to_a_newly_published_generation(run_copy):
    """A rebuilt index, published as a new generation, is served without a restart; until then the
    service keeps answering from the generation it opened."""
    from aepipe.pipeline import index_stage
    from aepipe.serve.service import SearchService

    svc = SearchService(run_copy.run_dir, check_every_s=0)
    assert svc.refresh() is False
    before = svc.info()
    assert before["generation"] is not None
    index_stage(run_copy.config("index.factory=IVF4,Flat"))
    assert svc.refresh() is True
    after = svc.info()
    assert after["generation"] != before["generation"] and "IVF4" in json.dumps(after)
    assert svc.refresh() is False and svc.info()["generation"] == after["generation"]


def test_importing_the_cli_does_not_load_fastapi():
    code = "import sys, aepipe.cli; sys.exit(1 if 'fastapi' in sys.modules or 'uvicorn' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_by_id_without_codes_in_memory_reads_the_store_and_agrees(trained_run):
    from aepipe.serve.service import SearchService

    big = SearchService(trained_run.run_dir)
    small = SearchService(trained_run.run_dir, codes_in_memory_mb=0)
    assert big._gen.codes is not None and small._gen.codes is None
    a, errs_a = big.search_ids(["0003", "x"], 6)
    b, errs_b = small.search_ids(["0003", "x"], 6)
    assert (
        [h.id for h in a[0]]
        == [h.id for h in b[0]]
        == [h.id for h in Searcher(trained_run.run_dir).search_ids(["0003"], 6)[0]]
    )
    assert errs_a == errs_b == [{"id": "x", "error": "id not in the store"}]


def test_small_searches_run_inline_big_ones_in_a_thread_with_the_same_answer(trained_run, monkeypatch):
    from fastapi.testclient import TestClient

    import aepipe.serve.service as service_module
    from aepipe.serve.app import create_app
    from aepipe.serve.service import SearchService

    svc = SearchService(trained_run.run_dir)
    assert svc.runs_inline(1) and svc.runs_inline(5, by_id=True)
    assert not svc.runs_inline(1, label="3")  # a label filter may turn every item into a hit
    assert not SearchService(trained_run.run_dir, codes_in_memory_mb=0).runs_inline(1, by_id=True)  # reads Parquet
    vec = Searcher(trained_run.run_dir).vectors_for_ids(["0042"]).tolist()
    with TestClient(create_app(svc)) as c:
        inline = [c.post("/api/search/ids", json={"ids": ["0003"], "k": 5}).json()]
        inline.append(c.post("/api/search/vectors", json={"vectors": vec, "k": 5}).json())
        monkeypatch.setattr(service_module, "INLINE_MAX_SCAN", 0)
        assert not svc.runs_inline(1)
        threaded = [c.post("/api/search/ids", json={"ids": ["0003"], "k": 5}).json()]
        threaded.append(c.post("/api/search/vectors", json={"vectors": vec, "k": 5}).json())
    assert inline == threaded and inline[1]["results"][0]["hits"][0]["id"] == "0042"


def test_query_codes_equal_the_encoders_codes(trained_run, digits_x):
    from aepipe.codes.encode import codes_of
    from aepipe.serve.service import query_codes

    model = Searcher(trained_run.run_dir).model
    x = digits_x[:7]
    assert np.array_equal(query_codes(model, x), codes_of(model, x))


def test_hit_to_dict_is_asdict():
    from dataclasses import asdict

    from aepipe.index.search import Hit

    hit = Hit("q.png", 2, "0007", 0.25, "7", "digits[7]", None)
    assert hit.to_dict() == asdict(hit) and list(hit.to_dict()) == list(asdict(hit))


def test_an_inline_search_answers_from_a_newly_published_generation(run_copy):
    """A search answered on the event loop (its index check runs in a thread first) moves to a
    newly published generation like one in a worker thread."""
    from fastapi.testclient import TestClient

    from aepipe.pipeline import index_stage
    from aepipe.serve.app import create_app
    from aepipe.serve.service import SearchService

    svc = SearchService(run_copy.run_dir, check_every_s=0)
    before = svc._gen.searcher.generation.name
    with TestClient(create_app(svc)) as c:
        index_stage(run_copy.config("index.factory=IVF4,Flat"))
        assert svc.runs_inline(1, by_id=True)
        r = c.post("/api/search/ids", json={"ids": ["0003"], "k": 3})
    after = svc._gen.searcher  # what the answer came from: no other call refreshed the service
    assert r.status_code == 200 and before and after.generation.name != before
    assert "IVF4" in after.infos["index_string"] and len(r.json()["results"][0]["hits"]) == 3


def test_the_serving_process_freezes_what_it_loaded(trained_run):
    """serve() keeps what it loaded out of the garbage collector (full collections traversing torch
    and the id maps stalled requests ~0.2 s); a library user's process is left alone."""
    code = """
import gc, sys
from aepipe.serve.service import SearchService
SearchService(sys.argv[1])
before = gc.get_freeze_count()
service = SearchService(sys.argv[1], freeze_gc=True)
frozen = gc.get_freeze_count()
service.refresh(force=True)  # a reopen unfreezes, collects and freezes again
print(before, frozen, gc.get_freeze_count())
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(trained_run.run_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, frozen, after = map(int, out.stdout.split())
    assert before == 0 and frozen > 10_000 and after > 10_000
