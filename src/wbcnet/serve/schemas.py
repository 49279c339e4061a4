"""The API's response models, built from the records of results.py.

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
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..results import CellResult, CountResult, Record

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


class ModelCard(BaseModel):
    model: str
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


class Health(BaseModel):
    status: str
    classified: dict[str, int] = Field(description="requests, the batches (forward passes) they were run in, "
                                                   "and images")
