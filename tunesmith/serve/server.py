"""`tunesmith serve`: load the models, pick an engine, run the API with uvicorn.

    tunesmith serve runs/support --adapter legal=runs/legal --port 8000 --api-key $KEY

Binds to 127.0.0.1 unless --host says otherwise. SIGTERM (or Ctrl-C) stops accepting connections,
lets running requests finish (up to --graceful-timeout seconds), answers those still running then with a
503 (streams: an error event, then [DONE]), and stops the engine. The address, every path and every name
are checked before the model loads.
"""

from __future__ import annotations

import importlib.util
import logging
import socket

from tunesmith.errors import TunesmithError
from tunesmith.serve.catalog import Catalog, build_catalog

log = logging.getLogger(__name__)

# Seconds uvicorn gives the responses cut at the graceful timeout to be written before it cancels them.
ANSWER_TIME = 5


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
    tool_parser: str | None = None,
):
    """The FastAPI app with its models loaded (the engine starts with the app). `tool_parser`: the tool-call
    format of the replies (hermes, llama3, mistral, qwen); None reads it from each model's template."""
    from tunesmith.models.load import load_tokenizer
    from tunesmith.serve.app import build_app

    from tunesmith.serve.tools import FAMILIES

    for flag, value in (("--max-batch", max_batch), ("--max-tokens", max_tokens)):
        if value < 1:
            raise TunesmithError(f"{flag} {value}: must be at least 1")
    if tool_parser is not None and tool_parser not in FAMILIES:
        raise TunesmithError(f"--tool-parser {tool_parser}: not one of {', '.join(FAMILIES)}")
    engine = pick_engine(engine)
    catalog = build_catalog(target, list(adapters), template, dtype)
    loaded = load_engine(engine, catalog, max_batch)
    app = build_app(loaded, catalog, load_tokenizer(catalog.base_path), api_key, max_tokens, tool_parser)
    return app, catalog, loaded


def serve(target: str, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: int = 30, threads: int | None = None, **options) -> None:
    for package in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(package) is None:
            raise TunesmithError(f"tunesmith serve needs {package}: pip install 'tunesmith[serve]'")
    if graceful_timeout < 0:
        raise TunesmithError(f"--graceful-timeout {graceful_timeout}: must be 0 or more seconds")
    if threads is not None and threads < 1:
        raise TunesmithError(f"--threads {threads}: must be at least 1")
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)

    check_address(host, port)
    app, catalog, engine = create_app(target, **options)
    auth = "API key required" if options.get("api_key") else "no API key"
    print(f"serving {', '.join(catalog.models)} with the {engine.name} engine on http://{host}:{port}/v1 ({auth})", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_timeout + ANSWER_TIME)
    server = graceful_server(config, graceful_timeout)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise TunesmithError(f"the server did not start on {host}:{port} (see the log above)")


def graceful_server(config, graceful_timeout: float):
    """uvicorn's server, telling the app when shutting down starts, so that the app (not uvicorn's cancelling)
    ends the requests still running after graceful_timeout seconds."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            config.app.state.shutdown.begin(graceful_timeout)
            await super().shutdown(sockets)

    return Server(config)


def check_address(host: str, port: int) -> None:
    """That the server can listen at host:port, before minutes go into loading a model."""
    if not 0 < port < 65536:  # getaddrinfo would take 99999 as 34463
        raise TunesmithError(f"--port {port}: not a port; give one from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise TunesmithError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed socket's TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as err:
            raise TunesmithError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); is another server running?") from None
