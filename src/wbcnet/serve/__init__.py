"""`wbcnet serve`: a web page and a REST API over one loaded model.

    worker.py   the one thread that runs the model; requests that arrive together share a batch
    uploads.py  what a client sends: the body-size cap, temporary files, decoding, display names
    app.py      the FastAPI app: routes, JSON answers, the page; create_app() and serve()
    page.html, page.js, page.css   the page: plain HTML, JavaScript and CSS served by the app (no build
                step, no CDN)

Serve is thin: cells go through the same decode and cell crop as `predict`
(data/preprocess.load_input), the model runs through inference.run_model, fields through
count.count_fields and count.differential, maps through explain.explain_images.
"""
from .app import create_app, serve

__all__ = ["create_app", "serve"]
