"""The gallery's web app: the JSON API (`faramir.gallery.api`) and the static page that uses it, behind the
token, origin and host rules of `faramir.gallery.safety`. Errors are answered as one line of JSON, never a
traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from faramir.errors import FaramirError
from faramir.gallery import api, curating, safety
from faramir.gallery.jobs import JobError, Jobs
from faramir.gallery.text import TextSearch
from faramir.store.cache import Cache
from faramir.store.errors import DiskFull, ReadOnlyCache, UnknownImage, storage_error

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def work_dir(db: str) -> Path:
    """The gallery's own files for the cache at `db` (thumbnails, finetuned heads): a folder beside
    it, `DB.gallery`; for an object-store URI, one under ~/.cache/faramir/gallery named by its hash."""
    if "://" in db:
        import hashlib

        base = os.environ.get("FARAMIR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "faramir")
        return Path(base) / "gallery" / hashlib.sha256(db.encode()).hexdigest()[:16]
    return Path(os.path.abspath(db).rstrip(os.sep) + ".gallery")


def create_app(
    db: str | os.PathLike | Cache | None = None,
    *,
    read_only: bool = False,
    loopback_only: bool = True,
    work: str | os.PathLike | None = None,
    token: str | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> FastAPI:
    """The gallery app over the cache at `db` (default: the default cache).

    `read_only` refuses every write; `loopback_only` answers only requests whose Host is a loopback
    name (for a server bound to a loopback address); `work` is where thumbnails and finetuned
    heads go (default: `work_dir(db)`); `token` is the write token (default: a random one);
    `weights_dir` holds the text tower for searching by text (default: $FARAMIR_WEIGHTS, else the
    default weights directory; never downloaded into). Nothing here loads torch for reading:
    a finetune's imports run in the background from the first label written or the finetune
    dialog opened (`faramir.gallery.jobs.Jobs.warm`), and the first search by text loads the
    text tower."""
    cache = Cache.open(db)
    root = Path(work) if work is not None else work_dir(cache.uri)
    write_token = None if read_only else (token or safety.new_token())
    app = FastAPI(title="faramir gallery", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gallery = api.Gallery(cache, root, Jobs(cache.uri, root / "heads"), read_only,
                                    TextSearch(weights_dir))
    app.state.cache, app.state.token, app.state.work = cache, write_token, root
    _answer_errors(app)
    _guard(app, write_token, loopback_only)

    @app.get("/", response_class=HTMLResponse)
    def index():
        html = (STATIC / "index.html").read_text(encoding="utf8")
        html = html.replace("{{TOKEN}}", write_token or "").replace("{{READ_ONLY}}", "1" if read_only else "")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api.router)
    app.include_router(curating.router)
    return app


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)


def _validation_reason(ex: RequestValidationError) -> str:
    parts = []
    for err in ex.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _answer_errors(app: FastAPI) -> None:
    """Every error as one line of JSON: ours (a FaramirError) 400, an unknown image 404."""

    @app.exception_handler(api.Refused)
    async def _refused(request, ex: api.Refused):
        return _error(ex.status, ex.reason)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, ex: RequestValidationError):
        return _error(400, _validation_reason(ex))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, ex: StarletteHTTPException):
        return _error(ex.status_code, ex.detail if isinstance(ex.detail, str) else "request refused")

    @app.exception_handler(UnknownImage)
    async def _unknown(request, ex):
        return _error(404, str(ex).split("\n")[0])

    @app.exception_handler(FaramirError)
    async def _ours(request, ex: FaramirError):
        status = 503 if isinstance(ex, (ReadOnlyCache, DiskFull)) else 400  # the storage, not the request
        return _error(status, str(ex).split("\n")[0])

    @app.exception_handler(Exception)
    async def _bug(request, ex: Exception):
        refused = storage_error(ex, app.state.cache.uri)
        if refused is not None:
            return _error(503, str(refused))
        return _error(500, f"internal error ({type(ex).__name__}): {ex}")


def _guard(app: FastAPI, write_token: str | None, loopback_only: bool) -> None:
    """The host check on every request, the token and origin check on every write, and the
    security headers on every response."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if (why := safety.host_refusal(request.headers.get("host"), loopback_only)) is not None:
            return _error(403, why)
        if request.method not in ("GET", "HEAD"):
            if (why := safety.write_refusal(request.headers, write_token)) is not None:
                return _error(403, why)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


__all__ = ["create_app", "work_dir", "JobError"]
