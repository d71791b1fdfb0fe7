"""`tunesmith serve`: load the models, pick an engine, run the API with uvicorn.

    tunesmith serve runs/support --adapter legal=runs/legal --port 8000 --api-key $KEY

Binds to 127.0.0.1 unless --host says otherwise. SIGTERM (or Ctrl-C) stops accepting connections,
lets running requests finish (up to --graceful-timeout seconds), then stops the engine.
"""

from __future__ import annotations

import importlib.util
import logging

from tunesmith.errors import TunesmithError
from tunesmith.serve.catalog import Catalog, build_catalog

log = logging.getLogger(__name__)

def pick_engine(name: str) -> str:
    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None
    if name == "auto":
        return "vllm" if has_vllm and torch.cuda.is_available() else "transformers"
    if name == "vllm" and not (has_vllm and torch.cuda.is_available()):
        raise TunesmithError("--engine vllm needs the vllm package and a CUDA GPU: pip install vllm (or use --engine transformers)")
    return name


def load_engine(name: str, catalog: Catalog, max_batch: int):
    if name == "vllm":
        from tunesmith.serve.vllm_engine import VLLMEngine

        return VLLMEngine.load(catalog, max_batch)
    from tunesmith.serve.engine import TransformersEngine

    return TransformersEngine.load(catalog, max_batch)


def create_app(
    target: str,
    adapters: list[str] = (),
    engine: str = "auto",
    api_key: str | None = None,
    template: str = "model",
    dtype: str = "auto",
    max_batch: int = 16,
    max_tokens: int = 256,
):
    """The FastAPI app with its models loaded (the engine starts with the app)."""
    from tunesmith.models.load import load_tokenizer
    from tunesmith.serve.app import build_app

    catalog = build_catalog(target, list(adapters), template, dtype)
    loaded = load_engine(pick_engine(engine), catalog, max_batch)
    app = build_app(loaded, catalog, load_tokenizer(catalog.base_path), api_key, max_tokens)
    return app, catalog, loaded


def serve(target: str, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: int = 30, threads: int | None = None, **options) -> None:
    for package in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(package) is None:
            raise TunesmithError(f"tunesmith serve needs {package}: pip install 'tunesmith[serve]'")
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)

    app, catalog, engine = create_app(target, **options)
    auth = "API key required" if options.get("api_key") else "no API key"
    print(f"serving {', '.join(catalog.models)} with the {engine.name} engine on http://{host}:{port}/v1 ({auth})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_timeout)
