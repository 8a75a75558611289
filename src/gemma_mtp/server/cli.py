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

from ..cli.model_args import (
    add_ctx_size_argument,
    add_device_arguments,
    add_draft_argument,
    add_gpu_layer_arguments,
    add_model_argument,
    add_quant_arguments,
    add_threads_argument,
)
from ..errors import GemmaMTPError, UsageError
from ..speculative.base import SPEC_TYPES, SpecOptions
from .settings import ServerSettings

__all__ = ["add_serve_arguments", "add_serve_options", "serve_command", "settings_from_args"]

API_KEY_ENV = "GEMMA_MTP_API_KEY"
_SPEC_ALIASES = ("draft-mtp",)


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
    spec = SpecOptions()
    model = parser.add_argument_group("models")
    add_model_argument(model, d, help="HF model directory or .gguf")
    add_draft_argument(model, d)
    model.add_argument("--alias", default=d.alias, metavar="NAME", help="model name in the API")
    add_device_arguments(model, d)
    add_gpu_layer_arguments(model, d)
    add_ctx_size_argument(model, d, help="context of each slot in tokens (default: %(default)s)")
    model.add_argument(
        "--chat-template-file",
        dest="chat_template_file",
        default=d.chat_template_file,
        metavar="FILE",
        help="use this Jinja template (or a tokenizer_config.json) instead of the model's",
    )
    add_threads_argument(model, help="CPU threads (default: torch's)")
    add_quant_arguments(parser, d)

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
    server.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="log every request")

    group = parser.add_argument_group('speculative decoding (each request may override: "speculative")')
    group.add_argument(
        "--spec-type",
        dest="spec_type",
        choices=(*SPEC_TYPES, *_SPEC_ALIASES),
        default=None,
        help="default: mtp when a drafter is given, else none",
    )
    group.add_argument(
        "--spec-draft-n-max",
        "--draft-max",
        "--draft",
        dest="spec_draft_n_max",
        type=int,
        default=spec.n_max,
        metavar="N",
        help="most tokens drafted per round (default: %(default)s)",
    )
    group.add_argument(
        "--spec-draft-n-min",
        "--draft-min",
        dest="spec_draft_n_min",
        type=int,
        default=spec.n_min,
        metavar="N",
        help="fewest tokens drafted per round (default: %(default)s)",
    )
    group.add_argument(
        "--spec-draft-p-min",
        "--draft-p-min",
        dest="spec_draft_p_min",
        type=float,
        default=spec.p_min,
        metavar="P",
        help="stop drafting below this draft probability (default: %(default)s)",
    )
    group.add_argument(
        "--spec-autotune",
        action="store_true",
        help="let an online controller pick each round's draft length (a request's own n_max turns it off)",
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    kind = args.spec_type or ("mtp" if args.model_draft else "none")
    spec = SpecOptions(
        type=kind,
        n_max=args.spec_draft_n_max,
        n_min=args.spec_draft_n_min,
        p_min=args.spec_draft_p_min,
        autotune=args.spec_autotune,
    )
    if args.model is None:
        raise UsageError("no model: pass -m/--model PATH (a Hugging Face model directory or a .gguf file)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"-t/--threads must be >= 1, got {args.threads}")
    return ServerSettings(
        model=args.model,
        model_draft=args.model_draft,
        host=args.host,
        port=args.port,
        parallel=args.parallel,
        max_queue=args.max_queue,
        api_key=args.api_key or None,
        alias=args.alias,
        ctx_size=args.ctx_size,
        n_predict=args.n_predict,
        spec=spec,
        dtype=args.dtype,
        device=args.device,
        n_gpu_layers=args.n_gpu_layers,
        n_gpu_layers_draft=args.n_gpu_layers_draft,
        quantized=args.quantized,
        quant_kernels=args.quant_kernels,
        chat_template_file=args.chat_template_file,
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

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
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
            f"model loaded: {service.model_id} ({settings.parallel} slots, context {settings.ctx_size} each, "
            f"speculative {settings.spec.type}); ready on {url}",
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
        f"gemma-mtp serve: loading {settings.model}; listening on {url} (/health is 503 until loaded)",
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
