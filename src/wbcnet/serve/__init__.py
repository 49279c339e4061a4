"""`wbcnet serve`: a web page and a REST API over one loaded model.

    worker.py   the one thread that runs the model; requests that arrive together share a batch
    uploads.py  what a client sends: the body-size cap, temporary files, decoding, display names
    app.py      the FastAPI app: routes, the page; create_app() and serve()
    schemas.py  the answers' Pydantic models, built from the records of core/results.py (/openapi.json)
    labapi.py   teaching it a lab (the page's second tab): uploads, suggested cells, labels, adapt, jobs
    finderapi.py teaching the finder a lab: its fields with the finds, a person's points, the finder job
    access.py   who may use it off loopback: a token or a password file on every /v1 route (401 otherwise)
    datadir.py  the data folder (--data-dir): a lab's uploads and label sheet; client names are checked ids
    registry.py the models it answers with (?model=): its own, and those adapted in it, loaded lazily
    jobs.py     the one background thread for suggest and adapt jobs; jobs.json survives a restart
    page.html, page.js, page.css   the page: plain HTML, JavaScript and CSS served by the app (no build
                step, no CDN)

Serve is thin: cells go through the same decode and cell crop as `predict`
(data/preprocess.load_input), the model runs through inference.run_model, fields through
count.find_fields (in a thread) and count.classify_found (on the model's thread), maps through
explain.explain_images. Every answer is a record's to_dict() (core/results.py); /docs works offline
(fastapi-offline serves Swagger UI itself).
"""
from .app import create_app, serve

__all__ = ["create_app", "serve"]
