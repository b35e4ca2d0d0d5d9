"""``mmembed serve``: the HTTP search service (API + web page) over a retrieval directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mmembed.cli.common import add_config_arguments, parse_encoder_settings
from mmembed.errors import MissingDependencyError

logger = logging.getLogger("mmembed.serve")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP: JSON API and web page",
                       description="Serve a retrieval directory built by 'mmembed index build': a JSON API under "
                                   "/api/v1, OpenAI-compatible /v1/embeddings and /v1/rerank (OpenAPI at "
                                   "/openapi.json, a route list at /docs) and a search page at /. It listens at "
                                   "once and answers /api/v1/ready with 503 until the index is loaded. Settings "
                                   "come from "
                                   "--config (ServeSettings YAML) and --set; the flags below override them.")
    p.add_argument("index", help="retrieval directory")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--api-key", help="require this key in the X-API-Key header (default: $MMEMBED_API_KEY; "
                                     "no key when unset)")
    p.add_argument("--rerank", metavar="CONFIG.yaml", help="attach a reranker (RerankConfig YAML, see "
                                                           "docs/reranking.md)")
    p.add_argument("--workers", type=int, help="image-decoding threads (default 2)")
    p.add_argument("--queue-size", type=int, help="requests that may wait beyond the workers before 503 (default 64)")
    p.add_argument("--batch-max-items", type=int, help="most queries per encoder call (default 32; 1: no batching)")
    p.add_argument("--batch-max-wait-ms", type=float, help="longest wait for a batch to fill (default 5)")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[],
                   help="an encoder loading option, over those recorded when the index was built (e.g. device=cuda)")
    p.add_argument("--allowed-host", action="append", dest="allowed_hosts", metavar="NAME",
                   help="also answer requests addressed to this host name (repeatable; '*': any). Localhost "
                        "names and --host are always answered")
    add_config_arguments(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """``--config`` and ``--set``, then the flags, then ``$MMEMBED_API_KEY`` when no key is set."""
    import dataclasses

    from mmembed.config import load_config
    from mmembed.serve.settings import ServeSettings, api_key_from_env

    settings = load_config(ServeSettings, args.config, args.set)
    flags = {"host": args.host, "port": args.port, "api_key": args.api_key, "workers": args.workers,
             "queue_size": args.queue_size, "batch_max_items": args.batch_max_items,
             "batch_max_wait_ms": args.batch_max_wait_ms, "allowed_hosts": args.allowed_hosts}
    settings = dataclasses.replace(settings, **{key: value for key, value in flags.items() if value is not None})
    return dataclasses.replace(settings, api_key=api_key_from_env(settings.api_key))


def load_retriever(directory: str, reranker: Any = None, encoder_settings: dict | None = None) -> Any:
    """``Retriever.load`` with the reranker (if any) attached and encoder loading options."""
    from mmembed.retrieval import Retriever

    return Retriever.load(directory, reranker=reranker, encoder_settings=encoder_settings)


def load_reranker(path: str | None) -> Any:
    if path is None:
        return None
    from mmembed.config import load_config
    from mmembed.rerank import RerankConfig, build_reranker

    return build_reranker(load_config(RerankConfig, path))


def run(args: argparse.Namespace) -> int:
    try:
        from mmembed.serve.app import create_app
        from mmembed.serve.server import bind, make_server
    except ImportError as e:
        raise MissingDependencyError(f"mmembed serve needs {e.name}: pip install 'mmembed[serve]'") from None
    from mmembed.errors import ConfigError
    from mmembed.retrieval import read_retrieval_manifest
    from mmembed.serve.settings import is_loopback

    settings = settings_from_args(args)
    read_retrieval_manifest(Path(args.index))  # a clear error before binding
    failed: list[str] = []

    def give_up(reason: str) -> None:  # a service that can never be ready should not look alive
        failed.append(reason)
        server.should_exit = True

    app = create_app(Path(args.index), settings, on_load_error=give_up,
                     load=lambda directory: load_retriever(str(directory), load_reranker(args.rerank),
                                                           parse_encoder_settings(args.encoder_set)))
    try:
        sock = bind(settings)
    except OSError as e:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}") from None
    _warn_if_exposed(settings, is_loopback(settings.host))
    logger.info("listening on http://%s:%d/ (API /api/v1, OpenAI-compatible /v1, docs /docs); loading the index",
                _url_host(settings.host), settings.port)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    server = make_server(app, settings, log_level=level)
    server.run(sockets=[sock])
    if failed:
        logger.error("the service stopped: %s", failed[0])
        return 1
    return 0


def _warn_if_exposed(settings: Any, loopback: bool) -> None:
    if loopback:
        return
    if settings.api_key is None:
        logger.warning("listening on %s without an API key: anyone who can reach it can search; set --api-key "
                       "or MMEMBED_API_KEY", settings.host)
    if not settings.allowed_hosts:
        logger.warning("only requests addressed to localhost%s are answered (Host header check against DNS "
                       "rebinding); add the names clients use with --allowed-host NAME",
                       "" if settings.host in ("0.0.0.0", "::") else f" or {settings.host}")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
