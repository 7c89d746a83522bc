"""Serving benchmark: ``kmflow serve`` under load on loopback, against a bare FastAPI endpoint.

One segments model (k = 8) is fitted here on a generated customer table (4 numbers, a flag,
a 4-level plan: 9 features after kmflow's preprocessing) and registered in a temporary
registry as the champion. Each contender is a uvicorn process on 127.0.0.1 (one worker,
access log off) and gets the same load: ``--requests`` POSTs (default 5,000) of ``--batch``
inputs each (default 1,000), from ``--clients`` concurrent clients (default 8; one thread
each with its own keep-alive httpx connection, bodies encoded once before the clock starts).

- **kmflow serve, records**: ``POST /v1/models/customers/predict`` with ``{"records": [...]}``
  of raw records: the model's stored preprocessing (encoding, imputation, scaling) runs per
  request, then the nearest center; with an API key.
- **kmflow serve, rows**: the same endpoint with ``{"rows": [...]}`` already prepared.
- **bare FastAPI + scikit-learn**: the same centers behind one FastAPI route taking
  ``{"rows": [...]}`` (a pydantic model ``list[list[float]]``) and answering
  ``pairwise_distances_argmin(rows, centers)``: what a user would write by hand, no key,
  no metrics, no limits.

Every answer is checked (status 200, one label per input, labels equal to scikit-learn's on
the prepared rows). Reported: requests/s, p50/p99/max latency, errors.

    python benchmarks/bench_serve.py --requests 500                      # quick look
    python benchmarks/bench_serve.py --output benchmarks/RESULTS.md      # 5,000 requests
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).parent))
from bench_lloyd import run_header, write_markdown

LOG = logging.getLogger("bench_serve")
API_KEY = "bench-key-0123456789abcdef"
K = 8


def customers(n: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    seg = rng.integers(0, K, n)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:07d}" for i in range(n)],
            "spend": np.round(20.0 + 15.0 * seg + rng.normal(0, 6, n), 2),
            "visits": (seg % 4) * 5 + rng.integers(0, 4, n),
            "tenure": np.round(rng.gamma(2.0, 12.0, n), 1),
            "calls": np.round(rng.normal(seg, 1.5, n), 3),
            "roaming": np.where(seg % 2 == 0, "yes", "no"),
            "plan": np.array(["basic", "plus", "gold", "team"])[seg % 4],
        }
    )


def build_model(root: Path) -> tuple[str, np.ndarray]:
    """Register the champion ``customers`` in `root`; return the registry URL and centers."""
    import dask
    from sklearn.cluster import KMeans

    from kmflow.jobs.segments.prepare import fit_preprocessing, plan_columns
    from kmflow.storage.registry import ModelRegistry
    from kmflow.storage.tables import read_table

    table = customers(20_000, seed=0)
    path = root / "customers.csv"
    table.to_csv(path, index=False)
    with dask.config.set(scheduler="synchronous"):
        frame = read_table(str(path))
        prep = fit_preprocessing(frame, plan_columns(frame, id="customer_id"))
        X = np.asarray(prep.transform(table), dtype=np.float64)
    centers = KMeans(K, n_init=4, random_state=0).fit(X).cluster_centers_
    reg = ModelRegistry(str(root / "registry"))
    reg.register(
        "customers",
        centers,
        init="k-means++",
        seed=0,
        n_iter=1,
        converged=True,
        inertia=0.0,
        fingerprint="bench",
        kind="segments",
        preprocessing=prep.to_json(),
        arrays=prep.arrays(),
    )
    reg.promote("customers", 1)
    return reg.url, reg.load("customers", 1).centers


# --------------------------------------------------------------------------- the bare peer


class Rows(BaseModel):
    """The bare peer's request body."""

    rows: list[list[float]]


def bare_app(centers_path: str) -> Any:
    from fastapi import FastAPI
    from sklearn.metrics import pairwise_distances_argmin

    centers = np.load(centers_path)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Rows) -> dict[str, list[int]]:
        return {"segments": pairwise_distances_argmin(np.asarray(body.rows), centers).tolist()}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{command} not ready:\n{log.read_text()}")


def load(
    url: str, bodies: list[bytes], want: list[np.ndarray], args: argparse.Namespace, key: str | None
) -> dict[str, Any]:
    """`args.requests` POSTs from `args.clients` threads; latencies and errors."""
    import httpx

    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(args.requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(headers=headers, timeout=60) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                j = i % len(bodies)
                t = time.perf_counter()
                try:
                    r = http.post(url, content=bodies[j])
                    ok = r.status_code == 200
                    got = r.json()["segments"] if ok else None
                except Exception as exc:
                    errors.append(repr(exc))
                    continue
                elapsed = time.perf_counter() - t
                if not ok:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                elif not np.array_equal(got, want[j]):
                    errors.append(f"request {i}: labels differ from scikit-learn's")
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start_t = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_t
    lat = np.array(latencies) * 1000
    return {
        "requests": args.requests,
        "wall": wall,
        "rps": len(latencies) / wall,
        "rows_per_s": len(latencies) * args.batch / wall,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "max": float(lat.max()) if len(lat) else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from sklearn.metrics import pairwise_distances_argmin

    from kmflow.storage.registry import ModelRegistry

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    url, centers = build_model(tmp)
    model = ModelRegistry(url).load("customers", 1)
    centers_path = tmp / "centers.npy"
    np.save(centers_path, centers)
    # a pool of distinct request bodies, cycled (8 of them: encoding stays out of the clock)
    tables = [customers(args.batch, seed=100 + i) for i in range(8)]
    prepared = [np.asarray(model.transform(t), dtype=np.float64) for t in tables]
    want = [pairwise_distances_argmin(x, centers) for x in prepared]
    records = [
        json.dumps(
            {"records": json.loads(t.drop(columns="customer_id").to_json(orient="records"))}
        ).encode()
        for t in tables
    ]
    rows = [json.dumps({"rows": x.tolist()}).encode() for x in prepared]
    env = {
        **os.environ,
        "KMFLOW_REGISTRY__URL": url,
        "KMFLOW_SERVE__API_KEYS": json.dumps([API_KEY]),
        "KMFLOW_SERVE__MAX_BODY_BYTES": str(64 * 2**20),
    }
    results: dict[str, dict[str, Any]] = {}
    port = free_port()
    proc = start(
        [
            sys.executable,
            "-m",
            "kmflow.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env,
        f"http://127.0.0.1:{port}/readyz",
        tmp / "kmflow.log",
    )
    try:
        predict = f"http://127.0.0.1:{port}/v1/models/customers/predict"
        load(
            predict,
            records[:1],
            want[:1],
            argparse.Namespace(**{**vars(args), "requests": 20}),
            API_KEY,
        )
        LOG.info("kmflow serve, records ...")
        results["kmflow serve, records"] = load(predict, records, want, args, API_KEY)
        LOG.info("kmflow serve, rows ...")
        results["kmflow serve, rows"] = load(predict, rows, want, args, API_KEY)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    port = free_port()
    proc = start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench_serve:bare",
            "--app-dir",
            str(Path(__file__).parent),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        {**env, "BENCH_SERVE_CENTERS": str(centers_path)},
        f"http://127.0.0.1:{port}/healthz",
        tmp / "bare.log",
    )
    try:
        bare_url = f"http://127.0.0.1:{port}/predict"
        load(
            bare_url, rows[:1], want[:1], argparse.Namespace(**{**vars(args), "requests": 20}), None
        )
        LOG.info("bare FastAPI ...")
        results["bare FastAPI + scikit-learn pairwise_distances_argmin, rows"] = load(
            bare_url, rows, want, args, None
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return results


def bare() -> Any:
    """uvicorn --factory entry point of the bare peer."""
    return bare_app(os.environ["BENCH_SERVE_CENTERS"])


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{args.requests:,} POST requests of {args.batch:,} inputs each, {args.clients} "
        "concurrent clients, loopback, one uvicorn worker per contender; every answer "
        "checked against scikit-learn's labels.",
        "",
        "| contender | requests/s | inputs/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['rps']:.1f} | {r['rows_per_s']:,.0f} | {r['p50']:.1f} | "
            f"{r['p99']:.1f} | {r['max']:.1f} | {r['errors']} |"
        )
    bare_r = results.get("bare FastAPI + scikit-learn pairwise_distances_argmin, rows")
    rows_r = results.get("kmflow serve, rows")
    if bare_r and rows_r:
        lines += [
            "",
            f"kmflow serve on prepared rows: {rows_r['rps'] / bare_r['rps']:.2f}x the bare "
            f"endpoint's requests/s (p50 {rows_r['p50']:.1f} vs {bare_r['p50']:.1f} ms).",
        ]
    for label, r in results.items():
        if r["errors"]:
            lines.append(f"- {label}: first error: {r['first_error']}")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--batch", type=int, default=1000, help="inputs per request")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--output", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    loads = os.getloadavg()
    results = run(args)
    body = report(args, results)
    print(body)
    if args.output:
        header = run_header(
            "bench_serve.py",
            argv,
            loads,
            "- load average after the run: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
            "- serving stack: "
            + ", ".join(f"{p} {version(p)}" for p in ("fastapi", "uvicorn", "pydantic", "httpx")),
        )
        write_markdown(args.output, "Serving: predict under load", header, body)
        LOG.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
