"""``mmembed serve``: the HTTP search service (API + web page) over a retrieval directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mmembed.cli.common import add_config_arguments
from mmembed.errors import MissingDependencyError

logger = logging.getLogger("mmembed.serve")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP: JSON API and web page",
                       description="Serve a retrieval directory built by 'mmembed index build': a JSON API under "
                                   "/api/v1 (OpenAPI at /openapi.json) and a search page at /. Settings come from "
                                   "--config (ServeSettings YAML) and --set; the flags below override them.")
    p.add_argument("index", help="retrieval directory")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--api-key", help="require this key in the X-API-Key header (default: $MMEMBED_API_KEY; "
                                     "no key when unset)")
    p.add_argument("--rerank", metavar="CONFIG.yaml", help="attach a reranker (RerankConfig YAML, see "
                                                           "docs/reranking.md)")
    p.add_argument("--workers", type=int, help="encoder worker threads (default 1)")
    p.add_argument("--queue-size", type=int, help="requests that may wait for a worker before 503 (default 16)")
    add_config_arguments(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """``--config`` and ``--set``, then the flags, then ``$MMEMBED_API_KEY`` when no key is set."""
    import dataclasses

    from mmembed.config import load_config
    from mmembed.serve.settings import ServeSettings, api_key_from_env

    settings = load_config(ServeSettings, args.config, args.set)
    flags = {"host": args.host, "port": args.port, "api_key": args.api_key, "workers": args.workers,
             "queue_size": args.queue_size}
    settings = dataclasses.replace(settings, **{key: value for key, value in flags.items() if value is not None})
    return dataclasses.replace(settings, api_key=api_key_from_env(settings.api_key))


def load_retriever(directory: str, reranker: Any = None) -> Any:
    """``Retriever.load`` with the reranker (if any) attached."""
    from mmembed.retrieval import Retriever

    return Retriever.load(directory, reranker=reranker)


def load_reranker(path: str | None) -> Any:
    if path is None:
        return None
    from mmembed.config import load_config
    from mmembed.rerank import RerankConfig, build_reranker

    return build_reranker(load_config(RerankConfig, path))


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mmembed.serve.app import create_app
    except ImportError as e:
        raise MissingDependencyError(f"mmembed serve needs {e.name}: pip install 'mmembed[serve]'") from None
    from mmembed.retrieval import read_retrieval_manifest
    from mmembed.serve.settings import is_loopback

    settings = settings_from_args(args)
    spec = read_retrieval_manifest(Path(args.index))["encoder"]  # a clear error before any model loads
    retriever = load_retriever(args.index, load_reranker(args.rerank))
    app = create_app(retriever, settings, encoder_spec=spec)
    if not is_loopback(settings.host) and settings.api_key is None:
        logger.warning("listening on %s without an API key: anyone who can reach it can search; set --api-key "
                       "or MMEMBED_API_KEY", settings.host)
    logger.info("search page: http://%s:%d/  API: /api/v1  OpenAPI: /openapi.json", _url_host(settings.host),
                settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, limit_concurrency=settings.max_connections,
                timeout_keep_alive=5, server_header=False, log_level=logging.getLevelName(
                    logging.getLogger().getEffectiveLevel()).lower())
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
