"""The FastAPI app behind `wbcnet serve`: the page at /, and the REST API under /v1.

create_app(model, meta, ...) builds an app around one loaded model; nothing is kept at module
level, so two apps (two checkpoints, or a test beside a server) never share anything. Handlers
are async and never run the model or decode on the event loop: decoding goes to a thread of the
default pool (asyncio.to_thread), the model to the app's ModelWorker.

Besides the model it was made with, the app answers with wbcnet's other own models (the zoo:
`fast`, `accurate`) and the models adapted in it (`?model=NAME` on classify, count, explain and
the model card; registry.py), and teaches itself a lab through labapi.py's routes
(the classifier) and finderapi.py's (the cell finder), whose files live in the data folder
(datadir.py) and whose long work runs on one job thread (jobs.py).

Status codes: 413 for a request over --max-upload-mb or with more than --max-files files; 415
when none of the files sent is an image that can be read (one unreadable file among good ones
gets an `error` in its own entry, and the rest are answered); 422 for a request without files;
404 for an unknown ?model=, lab, cell or job; 401 for a /v1 request without the credential of a
server that asks for one (access.py). Errors are {"detail": "one line"}, and each route declares
those it can answer in /openapi.json (schemas.errors).
"""
from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image

from .. import __version__
from ..cells.preprocess import from_meta
from ..core.errors import WbcnetError
from ..core.files import ensure_writable_dir
from ..core.results import CellResult, CountResult
from ..data.cache import default_workers
from ..inference.count import classify_found, count_warnings, differential, find_fields, lab_finder
from ..inference.explain import explain_images
from ..render.tiles import overlay
from ..inference.runner import run_model
from ..models.shift import unfamiliar_warning
from ..models.zoo import model_label, zoo_name
from ..render.draw import class_colours, draw_field
from .access import Access, Guard
from .datadir import LabStore, Refused, check_data_folder, make_data_folder
from .finderapi import finder_router
from .jobs import Jobs
from .labapi import lab_router
from .registry import Loaded, Models, card_fields
from .schemas import ClassifyAnswer, CountAnswer, ExplainAnswer, Health, ModelCard, errors
from .uploads import BodyLimit, decode_cells, save_uploads
from .worker import ModelWorker

# The page may load nothing from anywhere else (it must work offline, and a file name shown in it
# must never become markup that fetches something): scripts and styles from this server only.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _image_uri(rgb, size: int | None = None, fmt: str = "PNG") -> str:
    """A data URI of an RGB array or PIL image, resized to size x size where given."""
    img = Image.fromarray(rgb) if isinstance(rgb, np.ndarray) else rgb
    if size and img.width != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def model_card(meta, min_confidence: float, max_upload_mb: float, max_files: int, name: str = "") -> dict:
    """GET /v1/model: what the model is (`name`: what ?model= calls it; `zoo`: which of wbcnet's own
    it is, with its card's figures and speed), where it learned, and this server's limits."""
    card = card_fields(meta.card) if zoo_name(meta.path) else card_fields(None)
    return {
        "model": meta.model, "name": name, "zoo": zoo_name(meta.path),
        "figures": card["figures"], "speed": card["speed"],
        "checkpoint": meta.path.name if meta.path else None,
        "weights_sha256": meta.weights_sha256, "classes": list(meta.classes),
        # Where the training data lay on the training machine says nothing useful to a client.
        "sources": [{k: v for k, v in s.items() if k != "path"} for s in meta.sources],
        "temperature": meta.temperature, "img_size": meta.img_size, "preprocess": from_meta(meta).to_dict(),
        "shift_check": meta.shift_stats is not None, "git_commit": meta.git_commit,
        "trained_with": meta.wbcnet_version, "version": __version__,
        "val_macro_f1": meta.val_macro_f1, "min_confidence": min_confidence,
        "limits": {"max_upload_mb": max_upload_mb, "max_files": max_files},
        "colours": class_colours(meta.classes),
    }


def _unreadable(pairs) -> HTTPException:
    listed = "; ".join(f"{name}: {reason}" for name, reason in pairs[:5])
    more = f"; and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    return HTTPException(415, f"no readable image in the request ({listed}{more})")


def job_threads(threads: int | None = None) -> int:
    """Torch threads for the job thread: --threads, else half the cores (the other half answers
    requests while a model is adapted)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return threads or max(1, cores // 2)


def create_app(model, meta, max_upload_mb: float = 20.0, max_files: int = 64, min_confidence: float = 0.0,
               batch_size: int = 64, data_dir=None, threads: int | None = None, create_data: bool = True,
               access: Access | None = None) -> FastAPI:
    """The app for one loaded model (from checkpoint.load_model). Its model thread and job thread
    start when the server starts the app and stop with it. `data_dir`: where labs, adapted models
    and jobs are kept, made here (`create_data`), or only checked here and made when something is
    first stored (datadir.py); None: a temporary folder, removed when the app stops. `access`: the
    token or users every /v1 route then needs (access.py); None: open, as on loopback."""
    page = _asset("page.html")
    assets = {name: _asset(name) for name in ASSETS}
    temporary = data_dir is None
    data = Path(tempfile.mkdtemp(prefix="wbcnet-serve-data-") if temporary else data_dir)
    if temporary or create_data:
        make_data_folder(ensure_writable_dir(data, "data folder (--data-dir)"))
    else:
        check_data_folder(data)
    models = Models(data, model, meta)
    labs = LabStore(data, list(meta.classes))
    jobs = Jobs(data / "jobs.json", job_threads(threads))  # a job a restart stopped is failed here

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.worker = ModelWorker(model, meta, batch_size)
        jobs.start()
        try:
            yield
        finally:
            jobs.close()
            app.state.worker.close()
            if temporary:
                shutil.rmtree(data, ignore_errors=True)

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from this server, not from a CDN.
    app = FastAPIOffline(title="wbcnet", version=__version__, lifespan=lifespan,
                         description="White blood cell classification: single cells, whole fields and Grad-CAM maps. "
                                     "The page is at /.")
    access = access or Access()
    if access.on:  # inside BodyLimit: the cap holds for refused requests too
        app.add_middleware(Guard, access=access)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 1e6))

    @app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return JSONResponse({"detail": str(e)}, e.status)

    def check_count(files: list[UploadFile]) -> None:
        if len(files) > max_files:
            raise HTTPException(413, f"{len(files)} files in one request; this server takes at most {max_files} "
                                     f"(wbcnet serve --max-files)")

    server_bar = min_confidence  # the query parameter of the same name overrides it per request

    def refer_below(asked: float | None) -> float:
        return server_bar if asked is None else asked

    async def choose(name: str | None) -> Loaded:
        """The model ?model= names (loaded in a thread the first time), or 404."""
        return models.default if name in (None, models.default.name) else await asyncio.to_thread(models.get, name)

    async def read_cells(files: list[UploadFile], prep):
        """(display names, decoded inputs), or 415 when none of the files could be read."""
        def work():
            with tempfile.TemporaryDirectory(prefix="wbcnet-serve-") as tmp:
                uploads = save_uploads(files, Path(tmp))
                return [u.name for u in uploads], decode_cells(uploads, prep)

        names, decoded = await asyncio.to_thread(work)
        if not len(decoded.index):
            raise _unreadable([(names[i], reason) for i, (_, reason) in enumerate(decoded.errors)])
        return names, decoded

    async def on_model(fn, chosen: Loaded):
        """fn(model, meta) of the chosen model, on the one model thread (never beside another pass)."""
        return await asyncio.wrap_future(app.state.worker.call(lambda *_: fn(chosen.model, chosen.meta)))

    choice = Query(None, description="the model to answer with: a name from GET /v1/models, wbcnet's own "
                                     "(`fast`, `accurate`) or an adapted one (default: the server's own)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})

    def asset_route(body: bytes, mime: str):
        async def asset():
            return Response(body, media_type=mime, headers={"Cache-Control": "no-cache"})
        return asset

    for name, mime in ASSETS.items():
        app.add_api_route(f"/{name}", asset_route(assets[name], mime), methods=["GET"], include_in_schema=False)

    @app.get("/healthz", summary="Liveness, and the cells classified so far", response_model=Health)
    async def healthz():
        """`classified`: requests, the batches (forward passes) they were run in, and images."""
        return {"status": "ok", "classified": dict(app.state.worker.stats)}

    api = APIRouter()  # the /v1 routes of this file; labapi.py and finderapi.py have their own

    @api.get("/v1/model", summary="The model card: classes, training sources, temperature, version, limits",
             response_model=ModelCard, responses=errors(404))
    async def model_info(model: str | None = choice):
        chosen = await choose(model)
        return model_card(chosen.meta, server_bar, max_upload_mb, max_files, chosen.name)

    @api.post("/v1/classify", summary="Classify images of single cells", response_model=ClassifyAnswer,
              response_model_exclude_unset=True, responses=errors(404, 413, 415))
    async def classify(files: list[UploadFile] = File(..., description="one or more cell images"),
                       min_confidence: float | None = Query(None, ge=0, le=1, description="refer cells below this "
                                                            "confidence (default: the server's --min-confidence)"),
                       thumbnails: bool = Query(False, description="add `input`: the model's input (the cell crop) "
                                                "as a JPEG data URI"),
                       model: str | None = choice):
        """Per file, in order: class, confidence, probabilities, `refer` (unfamiliar, or below the
        confidence bar), `unfamiliar`, `cell_found`; or `error` for a file that can't be read."""
        check_count(files)
        chosen = await choose(model)
        meta, classes = chosen.meta, list(chosen.meta.classes)
        names, decoded = await read_cells(files, from_meta(meta))
        if chosen is models.default:  # the server's model: batched with other requests (worker.py)
            pred = await asyncio.wrap_future(app.state.worker.classify(decoded.images))
        else:
            pred = await on_model(lambda m, mt: run_model(m, mt, decoded.images, batch_size), chosen)
        referred = pred.referred(refer_below(min_confidence))
        results: list = [None] * len(names)
        for i, reason in decoded.errors_by_position(len(names)).items():
            results[i] = CellResult(names[i], error=reason).to_dict()
        for j, i in enumerate(decoded.index):
            results[i] = CellResult.from_predictions(names[i], pred, j, referred, classes,
                                                     cell_found=decoded.found[j]).to_dict()
            if thumbnails:
                results[i]["input"] = _image_uri(decoded.images[j].transpose(1, 2, 0), fmt="JPEG")
        warning = unfamiliar_warning(pred.unfamiliar, [s.get("name", "?") for s in meta.sources])
        return {"results": results, "warning": warning}

    @api.post("/v1/explain", summary="Where the model looked: Grad-CAM over one cell", response_model=ExplainAnswer,
              response_model_exclude_unset=True, responses=errors(404, 413, 415))
    async def explain(file: UploadFile = File(..., description="one cell image"), model: str | None = choice):
        """The cell as the model saw it, its class, and PNG data URIs of the Grad-CAM map for that
        class over it (and the attention-pooling map, for models that have one)."""
        chosen = await choose(model)
        names, decoded = await read_cells([file], from_meta(chosen.meta))
        x = decoded.images[:1]

        def work(model, meta):
            pred = run_model(model, meta, x)
            # The map of the class the API reports (explain_images alone would take its own
            # argmax, computed in full precision, and could name another class at a tie).
            maps = explain_images(model, x, meta.mean, meta.std, target=pred.predicted)
            return pred, maps

        pred, maps = await on_model(work, chosen)

        def draw():
            out = {"input": _image_uri(x[0].transpose(1, 2, 0), 224)}
            for key, name in (("Grad-CAM", "gradcam"), ("attention", "attention")):
                if key in maps:
                    out[name] = _image_uri((overlay(x[0], maps[key][0]) * 255 + 0.5).astype(np.uint8), 224)
            return out

        pictures = await asyncio.to_thread(draw)
        answer = CellResult.from_predictions(names[0], pred, 0, pred.referred(server_bar), list(chosen.meta.classes),
                                             cell_found=decoded.found[0]).to_dict()
        return {**answer, **pictures}

    @api.post("/v1/count", summary="Find, classify and count the white cells of whole fields",
              response_model=CountAnswer, response_model_exclude_unset=True, responses=errors(404, 413, 415))
    async def count(files: list[UploadFile] = File(..., description="one or more field images"),
                    min_confidence: float | None = Query(None, ge=0, le=1),
                    drawn: bool = Query(False, description="add `picture`: the field with its boxes, "
                                        "as a JPEG data URI"),
                    model: str | None = choice):
        """Per field: its cells (box x0,y0,x1,y1 in its pixels, class, confidence, `edge`: cut by
        the field's edge and not counted, `refer`), or `error`; and the differential of the
        counted cells with 95% Wilson intervals, as `wbcnet count` writes it."""
        check_count(files)
        bar = refer_below(min_confidence)
        chosen = await choose(model)
        meta, classes, prep = chosen.meta, list(chosen.meta.classes), from_meta(chosen.meta)
        with tempfile.TemporaryDirectory(prefix="wbcnet-serve-") as tmp:
            uploads = await asyncio.to_thread(save_uploads, files, Path(tmp))
            paths = [str(u.path) for u in uploads]
            # Reading and searching the fields runs in a thread of its own, each field decoded
            # once (its picture kept for drawing); only the classification holds the model's thread.
            found = await asyncio.to_thread(find_fields, paths, prep, min(len(paths), default_workers()), drawn,
                                            finder_weights=lab_finder(meta))
        if all(f.error for f in found):
            raise _unreadable([(u.name, f.error) for u, f in zip(uploads, found)])
        fields = await on_model(lambda m, mt: classify_found(m, mt, found, bar, batch_size), chosen)
        for u, f in zip(uploads, fields):  # the client's names, never the server's temporary paths
            f.file = u.name
            for c in f.cells:
                c.file = u.name

        def finish() -> dict:
            if drawn:
                for f, seen in zip(fields, found):
                    if not f.error:
                        f.picture = _image_uri(draw_field(seen.picture, f.cells, classes, seen.scale, f.rejected),
                                               fmt="JPEG")
            result = CountResult(fields, differential([c for f in fields for c in f.cells], classes), classes, bar,
                                 meta.shift_stats is not None, warnings=count_warnings(fields),
                                 finder="lab" if lab_finder(meta) else "shipped",  # never a server path
                                 model=chosen.name)  # what ?model= calls it: a zoo name, or an adapted model's
            return result.to_dict()

        return await asyncio.to_thread(finish)

    # With a token or users, every /v1 route takes the check as a dependency too: /openapi.json then
    # declares the schemes and the 401 (Guard has answered a request without the credential already).
    secured = {"dependencies": [Depends(access.dependency())], "responses": errors(401)} if access.on else {}
    for router in (api, lab_router(data, labs, models, jobs, check_count), finder_router(data, labs, models, jobs)):
        app.include_router(router, **secured)
    return app


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; any other name might resolve to an outside address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int, allow_remote: bool = False) -> socket.socket:
    """A socket bound to host:port, or a one-line WbcnetError (a busy port, a non-loopback host
    without `allow_remote`). Bound here rather than by uvicorn so the error is ours, not a log."""
    if not is_loopback(host) and not allow_remote:
        raise WbcnetError(f"--host {host} is not a loopback address: anyone who can reach it could send files to "
                          f"the model; add --allow-remote if that is what you mean (the API then needs a token or a "
                          f"user's password)")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        raise WbcnetError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    return sock


DEFAULT_DATA_DIR = "wbcnet-data"


def serve(model, meta, sock: socket.socket, max_upload_mb: float = 20.0, max_files: int = 64,
          min_confidence: float = 0.0, data_dir=DEFAULT_DATA_DIR, threads: int | None = None,
          log_level: str = "info", create_data: bool = True, access: Access | None = None) -> None:
    """Run the page and API on `sock` (from listen()) until Ctrl+C. `create_data`: make the data
    folder now (False: when something is first stored in it, as for the default ./wbcnet-data);
    `access`: the credential the API needs (access.server_access), None: none."""
    import uvicorn

    existed = Path(data_dir).is_dir()
    app = create_app(model, meta, max_upload_mb, max_files, min_confidence, data_dir=data_dir, threads=threads,
                     create_data=create_data, access=access)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"wbcnet serve: http://{shown}:{port}/ (model {model_label(meta.path) or meta.model}; "
          f"API docs at /docs); Ctrl+C to stop", file=sys.stderr)
    when = "" if existed or create_data else ", made when the first is stored"
    print(f"wbcnet serve: labs, labels and adapted models are kept in {Path(data_dir).absolute()}{when}",
          file=sys.stderr)
    for line in (access.said_at_start() if access else []):
        print(f"wbcnet serve: {line}", file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])


def run_command(opts, o) -> int:
    """`wbcnet serve` from its options (options.InferenceOptions and ServeOptions), until Ctrl+C;
    with --hash-password, a line for a --users file instead."""
    from .access import password_line, server_access

    if o.hash_password is not None:
        print(password_line(o.hash_password))
        return 0
    # Off loopback the API needs a credential: the users file is read, or a token made, before anything listens.
    access = server_access(not is_loopback(o.host), o.token, o.users)
    sock = listen(o.host, o.port, o.allow_remote)  # a busy port or a refused host fails before the model loads
    model, meta = opts.load_model()  # --threads: the model thread's torch threads too
    try:
        # A --data-dir named is made at start; the default one when something is first stored.
        serve(model, meta, sock, o.max_upload_mb, o.max_files, opts.min_confidence, o.data_dir or DEFAULT_DATA_DIR,
              opts.threads, create_data=o.data_dir is not None, access=access)
    except KeyboardInterrupt:  # uvicorn stops cleanly, then passes Ctrl+C on: not a failure
        pass
    print("wbcnet serve: stopped", file=sys.stderr)
    return 0
