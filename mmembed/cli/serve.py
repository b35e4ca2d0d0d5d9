"""``mmembed serve``: the HTTP service (API + web page) over a model, and a retrieval directory if given."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mmembed.cli.common import add_config_arguments, parse_encoder_settings
from mmembed.errors import MissingDependencyError

#: The arithmetic choices of --dtype and the parity bound (mmembed.encoders.precision, not
#: imported here: it imports torch, and the parser is built for every command).
DTYPES = ("float32", "bfloat16")
PARITY_BOUND = 0.9999

logger = logging.getLogger("mmembed.serve")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model (and an index) over HTTP: embeddings, search, web page",
                       description="Serve an embedding model, and optionally a retrieval directory built by 'mmembed "
                                   "index build': OpenAI-compatible /v1/embeddings, /v1/models and /v1/rerank, a "
                                   "JSON API under /api/v1 (search needs an index), /metrics (Prometheus), "
                                   "/health, OpenAPI at /openapi.json with a schema page at /docs, and a page at /. "
                                   "It listens at once and answers /ready with 503 until loaded. Settings come "
                                   "from --config (ServeSettings YAML) and --set; the flags below override them.")
    p.add_argument("index", nargs="?", help="retrieval directory (optional with --model: embeddings only)")
    p.add_argument("--model", metavar="NAME_OR_DIR",
                   help="the encoder to serve (a named model or a model folder); with an index it must be the "
                        "model the index was built with (default: the index's own)")
    p.add_argument("--served-model-name", action="append", dest="served_model_names", metavar="NAME",
                   help="a name the model answers to in /v1 (repeatable; the first is reported; default: the "
                        "model spec). NAME-query and NAME-document embed queries and documents")
    p.add_argument("--default-input-type", choices=("document", "query"),
                   help="what /v1/embeddings embeds when the request does not say (default document)")
    p.add_argument("--instructions", metavar="TSV_OR_DIR",
                   help="task instructions for task= without an index (query_instructions.tsv or an M-BEIR folder; "
                        "default: the bundled benchmark's)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="arithmetic of the encoder: bfloat16 encodes text in bfloat16 when its cosine to float32 "
                        f"reaches {PARITY_BOUND} on a probe set (else the service refuses to start), and images "
                        "too when they do; the model's identity is unchanged, so float32 indexes accept it")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for the encoder (default: torch's "
                                                            "choice, one per core)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--api-key", help="require this key in the X-API-Key header or as a bearer token (default: "
                                     "$MMEMBED_API_KEY; no key when unset)")
    p.add_argument("--rerank", metavar="CONFIG.yaml", help="attach a reranker (RerankConfig YAML, see "
                                                           "docs/reranking.md)")
    p.add_argument("--workers", type=int, help="image-decoding threads (default 2)")
    p.add_argument("--queue-size", type=int, help="requests that may wait beyond the workers before 503 (default 64)")
    p.add_argument("--batch-max-items", type=int, help="most items per encoder call (default 32; 1: no batching)")
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
             "batch_max_wait_ms": args.batch_max_wait_ms, "allowed_hosts": args.allowed_hosts,
             "served_model_names": args.served_model_names, "default_input_type": args.default_input_type}
    settings = dataclasses.replace(settings, **{key: value for key, value in flags.items() if value is not None})
    return dataclasses.replace(settings, api_key=api_key_from_env(settings.api_key))


def load_encoder_for(spec: str, settings: dict, dtype: str) -> Any:
    """The encoder of ``spec`` with its loading options, in ``dtype`` (parity checked)."""
    from mmembed.encoders.precision import with_precision
    from mmembed.encoders.registry import load_encoder

    return with_precision(load_encoder(spec, **settings), dtype)


def load_served(args: argparse.Namespace) -> Any:
    """What the service serves: a retriever over the index, or the model alone."""
    overrides = parse_encoder_settings(args.encoder_set)
    reranker = load_reranker(args.rerank)
    if args.index is None:
        from mmembed.data.task_instructions import read_instructions
        from mmembed.serve.backend import EmbeddingModel

        return EmbeddingModel(load_encoder_for(args.model, overrides, args.dtype), read_instructions(args.instructions),
                              reranker)
    from mmembed.retrieval import Retriever, read_retrieval_manifest

    manifest = read_retrieval_manifest(Path(args.index))
    settings = {**manifest.get("encoder_settings", {}), **overrides}
    encoder = load_encoder_for(args.model or manifest["encoder"], settings, args.dtype)
    return Retriever.load(args.index, encoder=encoder, reranker=reranker)


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
    from mmembed.serve.settings import is_loopback

    settings = settings_from_args(args)
    check_args(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    failed: list[str] = []

    def give_up(reason: str) -> None:  # a service that can never be ready should not look alive
        failed.append(reason)
        server.should_exit = True

    spec = args.model or _index_spec(args.index)
    app = create_app(settings=settings, encoder_spec=spec, on_load_error=give_up, load=lambda: load_served(args))
    try:
        sock = bind(settings)
    except OSError as e:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}") from None
    _warn_if_exposed(settings, is_loopback(settings.host))
    what = f"the index {args.index}" if args.index else f"the model {args.model} (no index: embeddings only)"
    logger.info("listening on http://%s:%d/ (OpenAI-compatible /v1, API /api/v1, docs /docs, metrics /metrics); "
                "loading %s", _url_host(settings.host), settings.port, what)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    server = make_server(app, settings, log_level=level)
    server.run(sockets=[sock])
    if failed:
        logger.error("the service stopped: %s", failed[0])
        return 1
    return 0


def check_args(args: argparse.Namespace) -> None:
    """Clear errors before binding: something to serve, a readable index, sane numbers."""
    from mmembed.errors import ConfigError

    if args.index is None and args.model is None:
        raise ConfigError("give a model to serve (--model NAME_OR_DIR), a retrieval directory, or both")
    if args.index is not None:
        if not Path(args.index).is_dir():
            hint = "" if args.model else f"; to serve a model without an index: --model {args.index}"
            raise ConfigError(f"{args.index} is not a retrieval directory{hint}")
        _index_spec(args.index)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.instructions is not None and args.index is not None:
        raise ConfigError("--instructions is for a service without an index; an index has its own instructions")


def _index_spec(directory: str | None) -> str | None:
    if directory is None:
        return None
    from mmembed.retrieval import read_retrieval_manifest

    return read_retrieval_manifest(Path(directory))["encoder"]


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
