"""The API's response models, built from the records of core/results.py.

`api_model(CellResult)` is a Pydantic model with one field per JSON key of the record (its
`to_dict()`): the dataclass field's type (records inside it replaced by their own models), its
JSON key as the alias, and its `doc` as the description; the record's COMPUTED keys too. So the
answers the app returns (record.to_dict(), plus the few keys an endpoint adds) are checked against
the records' own types, and /openapi.json describes them; a field added to a record appears here
without a second definition.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..core.results import CellResult, CountResult, Record

_MODELS: dict[type, type[BaseModel]] = {}


def _convert(tp):
    """A record's field type with every record in it replaced by its model."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and issubclass(tp, Record):
        return api_model(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_convert(a) for a in args)]
    if origin is list:
        return list[_convert(args[0])]
    if origin is dict:
        return dict[_convert(args[0]), _convert(args[1])]
    return tp


def api_model(record: type) -> type[BaseModel]:
    """The Pydantic model of a record's JSON (see the module's doc), made once per record."""
    if record in _MODELS:
        return _MODELS[record]
    hints = typing.get_type_hints(record)
    defs: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if not f.metadata.get("json", True):
            continue
        kw = {"alias": f.metadata.get("key", f.name), "description": f.metadata.get("doc")}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        defs[f.name] = (_convert(hints[f.name]), Field(**kw))
    for key, (tp, doc) in record.COMPUTED.items():
        defs[key] = (_convert(tp), Field(description=doc))
    model = create_model(record.__name__, __config__=ConfigDict(populate_by_name=True),
                         __doc__=(record.__doc__ or "").strip(), **defs)
    _MODELS[record] = model
    return model


CellAnswer = api_model(CellResult)
CountAnswer = api_model(CountResult)


class ClassifiedCell(CellAnswer):
    input: str | None = Field(None, description="the model's input (the cell crop) as a JPEG data URI, with "
                                                "thumbnails=true")


class ClassifyAnswer(BaseModel):
    results: list[ClassifiedCell] = Field(description="one per file sent, in order")
    warning: str | None = Field(None, description="said when many of the cells are unfamiliar")


class ExplainAnswer(CellAnswer):
    input: str = Field(description="the cell as the model saw it, a PNG data URI (224 px)")
    gradcam: str | None = Field(None, description="Grad-CAM of the class over the cell, a PNG data URI")
    attention: str | None = Field(None, description="the attention-pooling map, for models that have one")


class Limits(BaseModel):
    max_upload_mb: float
    max_files: int


class CardFigure(BaseModel):
    """One of a zoo model's in-lab figures, as scripts/ship_model.py measured it."""
    model_config = ConfigDict(extra="allow")
    set: str | None = Field(None, description="the cells it was measured on, e.g. 'raabin test split'")
    n: int | None = Field(None, description="cells in the set")
    accuracy: float | None = None
    accuracy_ci: str | None = Field(None, description="its 95% interval, e.g. '0.96-0.97'")
    macro_f1: float | None = None
    macro_f1_ci: str | None = None


class CardSpeed(BaseModel):
    """How fast a zoo model ran on the machine that shipped it."""
    model_config = ConfigDict(extra="allow")
    img_per_s: float | None = Field(None, description="cells a second, the classifier alone (batch 64)")
    reference_decode_per_s: float | None = Field(None, description="the yardstick measured beside it: PIL decoding "
                                                 "a 224 px cell JPEG to 112 px on one thread, pictures a second")
    cpu: str | None = Field(None, description="the machine's CPU")


class ModelCard(BaseModel):
    model: str
    name: str = Field(description="what ?model= calls it on this server")
    zoo: str | None = Field(description="which of wbcnet's own models it is ('fast', 'accurate'); null: another "
                                        "checkpoint (an adapted or lab model, or one the server was started with)")
    checkpoint: str | None
    weights_sha256: str | None
    classes: list[str]
    sources: list[dict[str, Any]] = Field(description="the labs the model learned from (without their paths)")
    temperature: float
    img_size: int
    preprocess: dict[str, Any]
    shift_check: bool
    git_commit: str | None
    trained_with: str | None
    version: str
    val_macro_f1: float | None
    min_confidence: float
    limits: Limits
    colours: list[str] = Field(description="a colour per class, as the page and count.html draw them")
    figures: list[CardFigure] = Field(default_factory=list, description="a zoo model's in-lab figures, from its card "
                                      "(empty: none measured)")
    speed: CardSpeed | None = Field(None, description="a zoo model's speed on the machine that shipped it, from its "
                                    "card")


class ErrorAnswer(BaseModel):
    detail: str = Field(description="what went wrong, and what to do, in one line")


# The errors a route may answer, declared on the routes where they can happen (errors()).
ERRORS = {
    401: "no credential, or a wrong one: a server reachable from other machines takes its token (Bearer) or a "
         "user's password (HTTP Basic) on every /v1 route",
    404: "no such model (?model=), lab, cell, field or job",
    409: "it conflicts with what is there: a model name taken (a zoo model's among them), or nothing new to "
         "suggest from",
    413: "the request is over the server's --max-upload-mb, or has more files than its --max-files",
    415: "none of the files sent is a picture that can be read",
    503: "the server is stopping and takes no new jobs",
}


def errors(*codes: int) -> dict[int, dict]:
    """FastAPI `responses` for these error statuses: {"detail": one line} each."""
    out = {}
    for code in codes:
        out[code] = {"model": ErrorAnswer, "description": ERRORS[code]}
        if code == 401:
            out[code]["headers"] = {"WWW-Authenticate": {
                "description": "the schemes the server takes: Bearer, Basic or both", "schema": {"type": "string"}}}
    return out


class Health(BaseModel):
    status: str
    classified: dict[str, int] = Field(description="requests, the batches (forward passes) they were run in, "
                                                   "and images")


# --- teaching it a lab: models, jobs, uploads, labels (labapi.py) -----------------------------------

class ModelInfo(BaseModel):
    name: str = Field(description="what ?model= takes")
    default: bool = Field(description="the model the server started with, used where no ?model= is given")
    zoo: bool = Field(False, description="one of wbcnet's own models (`fast`, `accurate`), shipped in the package")
    classes: list[str]
    img_size: int | None = Field(None, description="its input: the cell crop, this many pixels a side")
    purpose: str | None = Field(None, description="a zoo model: what it is for")
    parameters: int | None = Field(None, description="a zoo model: its parameters, from its card")
    figures: list[CardFigure] = Field(default_factory=list, description="a zoo model: its in-lab figures, from its "
                                      "card (empty: not measured yet)")
    speed: CardSpeed | None = Field(None, description="a zoo model: its speed on the machine that shipped it, from "
                                    "its card")
    speed_here: float | None = Field(None, description="a zoo model: cells a second it should classify on this "
                                     "server, an estimate: the card's img_per_s scaled by the decode yardstick "
                                     "(reference_decode_per_s) measured here")
    created: str | None = Field(None, description="when it was adapted (UTC, ISO 8601)")
    parent: str | None = Field(None, description="the model it was adapted from")
    lab: str | None = Field(None, description="the lab whose cells it was adapted on")
    labelled: int | None = Field(None, description="labelled cells it was adapted on")
    unlabelled: int | None = Field(None, description="the lab's pictures it was given without labels")
    budget: str | None = None
    job: str | None = Field(None, description="the job that made it")
    adapted_from: dict[str, Any] = Field(default_factory=dict, description="the checkpoint's own record of its "
                                         "adaptation (method, counts), without paths")
    finder: dict[str, Any] | None = Field(None, description="a lab model: the finder the lab taught it (fields, "
                                          "white cells and 'not' points it learnt from, steps); /v1/count with "
                                          "this model finds cells with it. null: the shipped finder")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="the server's own model first, then wbcnet's other own models this "
                                                "install has (the zoo), then the adapted ones, oldest first")


class JobAnswer(BaseModel):
    id: str
    kind: Literal["suggest", "adapt", "finder"] = Field(description="suggest cells, adapt the classifier, or "
                                                        "teach the finder")
    lab: str
    state: Literal["queued", "running", "done", "failed"]
    progress: float = Field(description="0 to 1")
    message: str = Field(description="what it is doing, or how it ended")
    model: str | None = Field(None, description="adapt, finder: the new model's name (usable once done); "
                                                "suggest: the model that chose the cells")
    parent: str | None = Field(None, description="adapt, finder: the model it starts from")
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    error: str | None = Field(None, description="why it failed, in one line")
    ahead: int = Field(0, description="jobs that run before this one (one job runs at a time)")


class JobList(BaseModel):
    jobs: list[JobAnswer] = Field(description="newest first")


class LabUpload(BaseModel):
    id: str
    name: str = Field(description="the file name it was sent with")
    width: int
    height: int
    round: int | None = Field(None, description="the suggestion round that looked at it; null: not yet")


class UploadRefused(BaseModel):
    name: str
    error: str


class UploadAnswer(BaseModel):
    lab: str
    saved: list[LabUpload]
    refused: list[UploadRefused] = Field(description="files that are not pictures wbcnet can read")
    uploads: int = Field(description="the lab's pictures in all")
    new: int = Field(description="those no suggestion round has looked at yet")


class LabCell(BaseModel):
    id: str
    picture: str = Field(description="the cell's picture: a URL on this server")
    label: str = Field(description="a class, 'skip' (not a white cell, or can't tell), or empty: not labelled")
    predicted: str = Field(description="the class the suggesting model gave it")
    confidence: float | None = None
    reason: str = Field(description="why it is worth a label")
    rank: int | None = None
    round: int | None = None


class LabAnswer(BaseModel):
    lab: str
    classes: list[str] = Field(description="the labels a cell can be given, besides 'skip'")
    uploads: int
    new_uploads: int = Field(description="pictures no suggestion round has looked at yet")
    cells: list[LabCell] = Field(description="every suggested cell, in the order of the sheet")
    counts: dict[str, int] = Field(description="labelled cells per class, and 'skip'")
    labelled: int = Field(description="cells with a class, what adapt learns from")


class LabSummary(BaseModel):
    lab: str
    uploads: int
    cells: int
    labelled: int


class LabList(BaseModel):
    labs: list[LabSummary]


class LabelBody(BaseModel):
    label: str | None = Field(None, description="a class, 'skip', or null/'' to take the label away")


class LabelEntry(BaseModel):
    id: str
    label: str


class LabelList(BaseModel):
    lab: str
    labels: list[LabelEntry] = Field(description="the cells with a label, in the order of the sheet")
    counts: dict[str, int]


class AdaptRequest(BaseModel):
    lab: str = Field(description="the lab whose labelled cells and pictures adapt the model")
    name: str = Field(description="the new model's name: 1-40 lowercase letters, digits and '-'")
    parent: str | None = Field(None, description="the model to start from: a name from GET /v1/models, a zoo "
                                                 "model's (`fast`, `accurate`) or an adapted one's (default: the "
                                                 "server's own)")
    budget: Literal["tiny", "normal"] = Field("normal", description="tiny: a few seconds, for trying the page")
    seed: int = 0


# --- teaching the finder: a lab's fields and the points a person put on them (finderapi.py) --------

class LabField(BaseModel):
    id: str = Field(description="the picture's id in the lab")
    name: str = Field(description="the file name it was sent with")
    width: int = Field(description="in the field's pixels, as the finder reads it (EXIF orientation applied)")
    height: int
    picture: str = Field(description="the field as the finder sees it, a JPEG: a URL on this server")
    corrected: bool = Field(description="saved by a person: its `wbc` points are all its white cells")
    saved: str | None = Field(None, description="when it was saved (UTC, ISO 8601)")
    white_cells: int = Field(0, description="its `wbc` points, once saved")
    not_cells: int = Field(0, description="its `not` points (finds that are no white cell), once saved")


class FieldList(BaseModel):
    lab: str
    fields: list[LabField] = Field(description="the lab's pictures that are whole fields (not square, or 1000 px "
                                               "and more a side), in upload order")
    corrected: int = Field(description="fields saved as corrected with at least one point: what teaching the finder "
                                       "learns from (a field saved with no point can't be taught: the points "
                                       "file has no row to say 'no white cell here')")
    white_cells: int = Field(description="`wbc` points over the corrected fields")


class FoundCell(BaseModel):
    x: float = Field(description="centre, in the field's pixels")
    y: float
    radius: float = Field(description="in the field's pixels")
    score: float = Field(description="the finder's confidence")


class FieldPoint(BaseModel):
    x: float = Field(description="in the field's pixels, 0 to its width")
    y: float = Field(description="in the field's pixels, 0 to its height")
    kind: str = Field(description="`wbc`: a white cell; `not`: a find that is no white cell",
                      json_schema_extra={"enum": ["wbc", "not"]})


class FieldAnswer(LabField):
    model: str = Field(description="the model whose finder found the cells")
    finder: Literal["shipped", "lab"] = Field(description="the shipped finder, or one a lab taught (the model's)")
    found: list[FoundCell] = Field(description="the white cells the finder found, best first")
    red_cell_px: float | None = Field(None, description="the red cells' diameter as the finder read it (pixels)")
    points: list[FieldPoint] = Field(description="what a person saved for the field (empty until it is saved)")


class FieldPoints(BaseModel):
    points: list[FieldPoint] = Field(description="every white cell of the field (`wbc`: the finds that are right "
                                                 "and the ones it missed) and, if any, the finds that are no white "
                                                 "cell (`not`); replaces what was saved before", max_length=2000)


class FinderRequest(BaseModel):
    lab: str = Field(description="the lab whose corrected fields teach the finder")
    name: str = Field(description="the new model's name: 1-40 lowercase letters, digits and '-'")
    parent: str | None = Field(None, description="the model whose classifier (and finder, if a lab taught it one) "
                               "the new model starts from (default: the server's own)")
    steps: int = Field(300, ge=1, le=3000, description="training steps (300: a few minutes on a CPU)")
    seed: int = 0
