"""OpenAI-compatible HTTP server: ``gemma-mtp serve`` (needs the ``server`` extra: fastapi, uvicorn).

Modules: ``settings`` (ServerSettings), ``service`` (loading), ``worker`` (the model-owning
thread that runs ``engine.scheduler.Scheduler``, continuous batching), ``app`` (FastAPI routes),
``generate`` (one request), ``schemas`` (request validation), ``responses`` (OpenAI shapes),
``text`` (stop strings, chat parsing), ``metrics`` (Prometheus text), ``listen`` (the socket,
bound before the model loads), ``cli`` (the ``serve`` subcommand). Nothing is imported here, so that
``gemma_mtp.server.cli`` stays importable without fastapi.
"""

__all__: list[str] = []
