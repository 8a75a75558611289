"""``gemma-mtp serve``: flags (llama-server's names) to ``ServerSettings``, then uvicorn.

fastapi and uvicorn are imported only when the server really starts, so ``gemma-mtp --help`` works
without the ``server`` extra.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

from ..cli.model_args import add_load_arguments, load_options_from_args
from ..cli.profile import add_profile_argument
from ..cli.spec_args import add_spec_arguments, spec_flags_from_args
from ..errors import GemmaMTPError
from .settings import ServerSettings

__all__ = ["add_serve_arguments", "add_serve_options", "serve_command", "settings_from_args"]

API_KEY_ENV = "GEMMA_MTP_API_KEY"


def add_serve_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``gemma-mtp`` subcommand parsers."""
    parser = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server",
        description="OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, "
        "/health, /metrics, /slots. Every slot speculates in the same target forward.",
        allow_abbrev=False,
    )
    add_serve_options(parser)
    return parser


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    d = ServerSettings()
    model = add_load_arguments(
        parser,
        model_help="HF model directory or .gguf (default: the demo pair, Gemma 3 270M + its trained drafter)",
        ctx_help="context of each slot in tokens (default: %(default)s)",
        media=True,
    )
    model.add_argument("--alias", default=d.alias, metavar="NAME", help="model name in the API")
    model.add_argument(
        "--chat-template-file",
        dest="chat_template_file",
        default=d.chat_template_file,
        metavar="FILE",
        help="use this Jinja template (or a tokenizer_config.json) instead of the model's",
    )

    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default=d.host, help="address to bind (default: %(default)s, loopback only)"
    )
    server.add_argument("--port", type=int, default=d.port, help="(default: %(default)s)")
    server.add_argument(
        "-np",
        "--parallel",
        type=int,
        default=d.parallel,
        metavar="N",
        help="slots: requests decoded together (default: %(default)s)",
    )
    server.add_argument(
        "--max-queue",
        dest="max_queue",
        type=int,
        default=d.max_queue,
        metavar="N",
        help="requests that may wait for a slot; more get HTTP 429 (default: %(default)s)",
    )
    server.add_argument(
        "--api-key",
        dest="api_key",
        default=os.environ.get(API_KEY_ENV),
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else none)",
    )
    server.add_argument(
        "-n",
        "--n-predict",
        dest="n_predict",
        type=int,
        default=d.n_predict,
        metavar="N",
        help="max_tokens of requests that give none, -1 = until end of turn (default: %(default)s)",
    )
    server.add_argument(
        "--allow-local-media",
        "--allowed-local-media-path",
        dest="allow_local_media",
        default=d.allow_local_media,
        metavar="DIR",
        help="let image_url parts name files (a path or file:// URL) under DIR (default: only data: URLs)",
    )
    server.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="log every request")

    add_spec_arguments(parser, title='speculative decoding (each request may override: "speculative")')
    add_profile_argument(parser)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The flags as `ServerSettings`; without -m, the demo pair (as `run` uses it)."""
    from ..cli.common import demo_defaults
    from ..cli.profile import apply_profile

    load, spec = apply_profile(
        load_options_from_args(args), spec_flags_from_args(args), args.profile, no_profile=args.no_profile
    )
    load, spec, template = demo_defaults(load, spec)
    return ServerSettings(
        load=load,
        spec=spec,
        host=args.host,
        port=args.port,
        parallel=args.parallel,
        max_queue=args.max_queue,
        api_key=args.api_key or None,
        alias=args.alias,
        n_predict=args.n_predict,
        chat_template_file=args.chat_template_file,
        fallback_chat_template=template,
        allow_local_media=args.allow_local_media,
    )


def serve_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        import uvicorn

        from .app import create_app
        from .service import load_service
    except ImportError as exc:
        raise GemmaMTPError(
            f"serve needs the server extra ({exc.name} is missing): pip install 'gemma-mtp[server]'"
        ) from None
    from .listen import bind_socket

    # bound before anything loads: a busy port is one error line, not a model load and uvicorn's exit
    sock = bind_socket(settings.host, settings.port)
    verbose = bool(getattr(args, "verbose", False))
    url = f"http://{_url_host(settings.host)}:{sock.getsockname()[1]}"
    if not _is_loopback(settings.host) and settings.api_key is None:
        print(
            f"warning: listening on {settings.host} without --api-key: anyone who reaches it can use it",
            file=sys.stderr,
        )
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def load(metrics):
        service = load_service(settings, metrics=metrics)
        print(
            f"model loaded: {service.model_id} ({settings.parallel} slots, context {settings.load.ctx_size} "
            f"each, speculative {service.default_spec.type}); ready on {url}",
            file=sys.stderr,
            flush=True,
        )
        return service

    def load_failed(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, loader=load, on_load_error=load_failed)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    print(
        f"gemma-mtp serve: loading {settings.load.model}; listening on {url} (/health is 503 until loaded)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failures:
        raise failures[0]
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
