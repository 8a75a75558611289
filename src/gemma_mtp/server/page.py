"""The chat page: ``GET /`` answers ``static/index.html``, ``/static/...`` the files beside it.

Plain files shipped in the package (no build step, no CDN): ES modules that talk to this server's
own ``/v1/chat/completions``. Both are public, like ``/health``; the page asks for the API key
itself when the API answers 401. A strict Content-Security-Policy (scripts and styles from this
server only, no inline script) backs up the page's rule that model text is never parsed as HTML.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "add_page"]

STATIC_DIR = Path(str(resources.files("gemma_mtp.server") / "static"))

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        if path.endswith(".js"):  # module scripts need a JavaScript type, whatever mimetypes says
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


def add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
