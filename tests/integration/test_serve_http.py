"""The scoring service through a real HTTP client (httpx) against a real uvicorn server on a free
loopback port (in a thread; one test runs ``ldm-ood serve`` as a process and stops it with SIGTERM),
serving the tiny 2D run of ``tests/tiny_runs.py`` calibrated for the LDM.

Every score is compared with the ScoringSession's for the same file (``test_session.py`` shows those
equal ``ldm-ood score`` in folder and manifest mode). Which scans run, wait or are refused is made
certain by holding the workers with real jobs on the service's own queue, never by timing.
"""

import gzip
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from dicom_series import write_series
from tiny_runs import build_tiny_2d_run

from ldm_ood.bundle import export_bundle, open_bundle
from ldm_ood.data.io import write_image
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.session import ScoringSession
from ldm_ood.serve.server import bind, build_server
from ldm_ood.serve.service import ScoringService, ServeSettings

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[2] / "src"
LIMITS = dict(max_upload_bytes=64 << 10, max_image_bytes=256 << 10)


def _until(predicate, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{what} not reached in {timeout} s"
        time.sleep(0.01)


class Running:
    """A ScoringService behind a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, service: ScoringService):
        self.service = service
        self.server = build_server(service, log_level="warning", access_log=False)
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        _until(lambda: self.server.started, what="server start")

    def stop(self):
        """What SIGTERM does to ``ldm-ood serve``: the same handler, called directly (not the main thread)."""
        self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run, _ = build_tiny_2d_run(tmp_path_factory.mktemp("serve"))
    calibrate_ldm(run.root, progress=False)
    return run


@pytest.fixture(scope="module")
def scans(run):
    data = run.root.parent
    return {p.name: p for p in [*(data / "data").glob("t*.nii.gz"), *(data / "folder").glob("f*.nii.gz")]}


@pytest.fixture(scope="module")
def reference(run, scans, tmp_path_factory):
    """Each scan's row and map as the ScoringSession makes them (= ``ldm-ood score``)."""
    session, out = ScoringSession(run.root, "ldm"), tmp_path_factory.mktemp("reference")
    return {name: session.score(path, out).row for name, path in scans.items()}


@pytest.fixture(scope="module")
def server(run):
    running = Running(ScoringService(ScoringSession(run.root, "ldm"), ServeSettings(workers=2, queue=16, **LIMITS)))
    yield running
    running.stop()


def _post(url, name, data, timeout=60):
    return httpx.post(f"{url}/v1/score", files={"file": (name, data, "application/octet-stream")}, timeout=timeout)


def _assert_scored(response, row, run, model_id=None):
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score"] == body["model_score"] == row["pred_score"]
    assert body["percentile"] == row["percentile"] and body["flag"] == bool(row["flag"])
    assert body["calibration_id"] == row["calibration_id"] and body["qc_reason"] is None
    assert body["model_id"] == (model_id or _model_id(run))
    assert body["threshold"] == _threshold(run) and body["fpr"] == 0.05 and body["method"] == "ldm"
    assert body["metrics"] == {k: row[k] for k in ("score_mse", "score_lpips", "signed_score", "mse@200", "mse@600", "lpips@200",
                                                   "lpips@600")}
    assert body["seconds"] >= 0 and body["total_seconds"] >= body["queue_seconds"] >= 0
    return body


def _model_id(run):
    """The id a run's networks are named by (as folder mode's <case>.json)."""
    from ldm_ood.methods.calibration_files import check_calibration

    return check_calibration(run, "ldm").model_id


def _threshold(run):
    return json.loads(run.ood_calibration_path.read_text())["threshold"]


def _error(response, status, code, name=None, problem=""):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and problem in body["detail"], body
    if name is not None:
        assert body["detail"].startswith(f"{name}: ")
    assert "ldm-ood-serve-" not in body["detail"]  # the server's private folder is never named
    return body


def _map_of(response_bytes):
    img = nib.Nifti1Image.from_bytes(gzip.decompress(response_bytes))
    return img.get_fdata(), img.affine


def test_health_model_and_a_valid_openapi_schema(server, run):
    import schemathesis

    health = httpx.get(f"{server.url}/v1/health").json()
    record = json.loads(run.calibration_record_path("ldm").read_text())
    assert health["status"] == "ok" and health["model_id"] == _model_id(run) != ""
    assert (health["workers"], health["queue"], health["running"], health["waiting"]) == (2, 16, 0, 0)
    model = httpx.get(f"{server.url}/v1/model").json()
    assert model["model_id"] == _model_id(run) and model["calibration"]["threshold"] == _threshold(run)
    assert model["calibration"]["n_validation"] == 3 and model["input"]["grid"] == [16, 16]
    assert model["networks"] == record["networks"]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.validate()  # against the OpenAPI meta-schema
    operations = [op.ok() for op in schema.get_all_operations()]  # .ok(): each resolved without error
    assert sorted(f"{op.method.upper()} {op.path}" for op in operations) == [
        "DELETE /v1/maps/{map_id}", "GET /v1/health", "GET /v1/maps/{map_id}", "GET /v1/model", "POST /v1/score"]


def test_a_scan_scores_as_the_cli_and_its_anomaly_map_downloads(server, run, scans, reference):
    row = reference["f0.nii.gz"]
    body = _assert_scored(_post(server.url, "f0.nii.gz", scans["f0.nii.gz"].read_bytes()), row, run)
    assert body["case_id"] == "f0" and body["map"]["url"] == f"/v1/maps/{body['map']['id']}"
    got = httpx.get(server.url + body["map"]["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "application/gzip"
    assert got.headers["content-disposition"] == 'attachment; filename="f0_anomaly_map.nii.gz"'
    assert len(got.content) == body["map"]["bytes"]
    expected = nib.load(row["map_path"])
    voxels, affine = _map_of(got.content)
    assert np.array_equal(voxels, expected.get_fdata()) and np.array_equal(affine, expected.affine)
    assert httpx.delete(server.url + body["map"]["url"]).status_code == 204
    _error(httpx.get(server.url + body["map"]["url"]), 404, "not_found", problem="no anomaly map")
    _error(httpx.get(f"{server.url}/v1/maps/NOT-AN-ID"), 422, "invalid_request", problem="map_id")
    _error(httpx.get(f"{server.url}/v1/maps/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")  # no route: a path is no id


def test_a_zipped_dicom_series_scores_as_folder_mode_scores_the_series(server, run, tmp_path):
    """A single-slice CT series (pydicom's CT_small.dcm) for the 2D model: the service's case id is the
    series' UID, and its score and map are those of ``score --input`` on a folder holding the series."""
    uid, files = write_series(tmp_path / "tree" / "series", 1)
    score_ldm(run.root, input_dir=tmp_path / "tree", output_dir=tmp_path / "out", progress=False)
    zipped = BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in files:
            zf.write(f, f"export/{f.name}")
    response = _post(server.url, "export.zip", zipped.getvalue())
    assert response.status_code == 200, response.text
    body = response.json()
    expected = read_folder_score(tmp_path / "out" / f"{uid}.txt")
    assert body["case_id"] == uid and body["model_score"] is not None
    assert body["score"] == (expected if math.isfinite(expected) else None)
    assert (body["qc_reason"] is None) == math.isfinite(expected) and body["flag"] == (expected > body["threshold"])
    voxels, affine = _map_of(httpx.get(server.url + body["map"]["url"]).content)
    reference = nib.load(tmp_path / "out" / f"{uid}.nii.gz")
    assert voxels.shape == (128, 128) and np.array_equal(voxels, reference.get_fdata())
    assert np.array_equal(affine, reference.affine)


def _bad_uploads(scans, tmp_path):
    """``{name: (bytes, status, code, problem)}``: one of each kind of bad upload."""
    good = scans["f1.nii.gz"].read_bytes()
    nan = np.ones((18, 20), np.float32)
    nan[3, 4] = np.nan
    zipped = BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("IM0001.dcm", b"DICM" * 10)
    return {
        "cut.nii.gz": (good[: len(good) // 2], 400, "bad_upload", "unreadable or truncated gzip data"),
        "notes.nii": (b"not an image at all\n" * 30, 400, "bad_upload", "not a NIfTI file"),
        "volume.nii.gz": (write_image(tmp_path / "v.nii.gz", np.random.default_rng(0).normal(size=(8, 9, 7))
                                      ).read_bytes(), 422, "unusable_scan", "wrong dimensionality"),
        "nan.nii.gz": (write_image(tmp_path / "n.nii.gz", nan).read_bytes(), 422, "unusable_scan",
                       "contains 1 NaN and 0 Inf voxel(s)"),
        "series.zip": (zipped.getvalue(), 422, "unusable_scan", "not a DICOM file"),
        "bomb.nii.gz": (gzip.compress(bytes(1 << 20)), 413, "too_large", "decompresses to more than the image limit"),
        "huge.nii": (os.urandom(70 << 10), 413, "too_large", "larger than the limit of 65536 bytes"),
    }


def test_concurrent_requests_with_bad_uploads_among_them(server, run, scans, reference, tmp_path):
    bad = _bad_uploads(scans, tmp_path)
    requests = [(name, path.read_bytes()) for name, path in scans.items()] * 2 + [(n, v[0]) for n, v in bad.items()]
    random.Random(0).shuffle(requests)
    before = httpx.get(f"{server.url}/v1/health").json()
    barrier = threading.Barrier(len(requests))

    def send(item):
        barrier.wait()
        return _post(server.url, *item)

    with ThreadPoolExecutor(len(requests)) as pool:  # 17 at once: within 2 workers + 16 waiting
        responses = list(pool.map(send, requests))
    for (name, _), response in zip(requests, responses):
        if name in bad:
            _error(response, *bad[name][1:3], name=None if name == "huge.nii" else name, problem=bad[name][3])
        else:
            _assert_scored(response, reference[name], run)
    after = httpx.get(f"{server.url}/v1/health").json()
    assert after["scored"] - before["scored"] == 2 * len(scans) and after["refused"] == before["refused"]
    assert after["failed"] - before["failed"] == len(bad) - 1  # the oversized body never reached the handler
    assert not [p for p in server.service.folder.iterdir() if p.name != "maps"]  # every upload's folder is gone
    assert len(server.service.maps) == len(list((server.service.folder / "maps").iterdir()))


def test_a_body_without_a_length_is_cut_at_the_limit(server):
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def chunks():  # chunked transfer: no Content-Length to refuse the body by
        yield head
        for _ in range(100):
            yield bytes(1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(f"{server.url}/v1/score", content=chunks(), timeout=60,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _error(response, 413, "too_large", problem="larger than the limit of 65536 bytes")
    assert httpx.get(f"{server.url}/v1/health").json()["status"] == "ok"


def test_a_full_queue_is_429_and_the_admitted_scans_are_scored(run, scans, reference):
    running = Running(ScoringService(ScoringSession(run.root, "ldm"), ServeSettings(workers=1, queue=2, **LIMITS)))
    queue, gate = running.service.queue, threading.Event()
    try:
        blocker = queue.submit(gate.wait)  # holds the only worker
        _until(lambda: queue.state().running == 1)
        names = (sorted(scans) * 2)[:6]
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(_post, running.url, n, scans[n].read_bytes()) for n in names]
            _until(lambda: running.service.counts["refused"] == 4 and queue.state().waiting == 2,
                   what="2 scans waiting, 4 refused")
            health = httpx.get(f"{running.url}/v1/health").json()
            assert (health["running"], health["waiting"], health["refused"]) == (1, 2, 4)
            gate.set()
            responses = [f.result(60) for f in futures]
        blocker.result(10)
        refused = [r for r in responses if r.status_code == 429]
        assert len(refused) == 4 and all(r.headers["retry-after"] == "1" for r in refused)
        for r in refused:
            _error(r, 429, "queue_full", problem="1 scan(s) being scored and 2 waiting")
        for name, r in zip(names, responses):
            if r.status_code != 429:
                _assert_scored(r, reference[name], run)
        _assert_scored(_post(running.url, names[0], scans[names[0]].read_bytes()), reference[names[0]], run)
    finally:
        gate.set()
        running.stop()


def test_shutdown_mid_request_finishes_the_admitted_scan_then_the_server_exits(run, scans, reference, tmp_path):
    """Also: the model was loaded once, at start: its files are gone before the scan and it is scored all the same."""
    copy = tmp_path / "run"
    shutil.copytree(run.root, copy)
    running = Running(ScoringService(ScoringSession(copy, "ldm"), ServeSettings(workers=1, queue=2, **LIMITS)))
    folder, queue, gate = running.service.folder, running.service.queue, threading.Event()
    shutil.rmtree(copy)
    try:
        blocker = queue.submit(gate.wait)
        _until(lambda: queue.state().running == 1)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_post, running.url, "t0.nii.gz", scans["t0.nii.gz"].read_bytes())
            _until(lambda: queue.state().waiting == 1, what="the request admitted and waiting")
            running.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM runs
            try:  # a new request: refused by the closing queue, or by the closed listener
                _error(_post(running.url, "t1.nii.gz", scans["t1.nii.gz"].read_bytes()), 503, "shutting_down")
            except httpx.TransportError:
                pass
            gate.set()
            _assert_scored(in_flight.result(60), reference["t0.nii.gz"], run)
        blocker.result(10)
        running.thread.join(60)
        assert not running.thread.is_alive() and not folder.exists()
    finally:
        gate.set()
        if running.thread.is_alive():
            running.stop()


def _connectable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _files(root):
    return {p.relative_to(root): (p.stat().st_mode, p.read_bytes()) for p in sorted(Path(root).rglob("*"))
            if p.is_file()}


def test_serving_a_bundle_sigterm_during_an_upload_answers_it_503_and_the_process_exits_0(run, scans, reference,
                                                                                            tmp_path):
    """``ldm-ood serve --model`` as a process: the bundle's scores are its run's, the bundle is left as it
    was, and SIGTERM while a request's body is still arriving answers it 503 and exits 0."""
    bundle = open_bundle(export_bundle(run.root, tmp_path / "model"))
    before = _files(bundle.root)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(tmp),
               COLUMNS="300")
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ldm_ood", "serve", "--model", str(bundle.root), "--port", "0",
                                 "--workers", "1", "--queue", "1"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        _until(lambda: "http://127.0.0.1:" in log.read_text() or proc.poll() is not None, 120, "the start line")
        port = int(log.read_text().split("http://127.0.0.1:")[1].split()[0].rstrip("/;,—"))
        url = f"http://127.0.0.1:{port}"
        _until(lambda: _connectable(port), 60, "the listener")
        assert httpx.get(f"{url}/v1/model").json()["bundle"]["model_id"] == bundle.model_id
        _assert_scored(_post(url, "f1.nii.gz", scans["f1.nii.gz"].read_bytes()), reference["f1.nii.gz"],
                       run, model_id=bundle.model_id)

        boundary, data = "b0undary", scans["f0.nii.gz"].read_bytes()
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f0.nii.gz"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        conn.sendall((f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nExpect: 100-continue\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
                      "\r\n").encode())
        assert conn.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # the app is reading this request's body
        proc.send_signal(signal.SIGTERM)
        _until(lambda: not _connectable(port), 30, "the listener closed")  # the shutdown has begun
        conn.sendall(body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        conn.close()
        status, _, payload = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 503"), answer
        assert json.loads(payload)["error"] == "shutting_down"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "Finished server process" in text
    assert not list(tmp.iterdir())  # the private folder is gone
    assert _files(bundle.root) == before and open_bundle(bundle.root).model_id == bundle.model_id


def test_fuzzing_from_the_schema_finds_no_server_error(server):
    """Positive and negative examples of every operation (40 each, derandomized): no 5xx, and every
    answer as the schema documents it (status and body)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    seen = []
    for operation in (op.ok() for op in schema.get_all_operations()):
        strategy = operation.as_strategy(schemathesis.GenerationMode.POSITIVE) | operation.as_strategy(
            schemathesis.GenerationMode.NEGATIVE)

        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def fuzz(case):
            response = case.call(base_url=server.url, timeout=60)
            seen.append((f"{case.method} {case.operation.path}", response.status_code))
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        fuzz()
    operations = {op for op, _ in seen}
    assert len(operations) == 5  # those with parameters or a body got many examples:
    assert all(sum(op == o for o, _ in seen) >= 20 for op in operations if "{" in op or op.startswith("POST"))
    assert all(status < 500 for _, status in seen)
    assert {status for op, status in seen if op == "POST /v1/score"} >= {400, 422}
    assert httpx.get(f"{server.url}/v1/health").json()["status"] == "ok"
