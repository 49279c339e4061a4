"""One way to declare a command-line flag: on the dataclass field it sets.

    @dataclass
    class PretrainConfig:
        out: str = flag(MISSING, "folder for backbone.safetensors, ...", required=True)
        data: list = flag([], "an ImageFolder or CSV manifest of cells; repeatable", append=True, metavar="NAME=PATH")
        epochs: int = flag(50, "passes over every cell (default {default})")
        crop: str = flag("none", "the whole picture, or the cell found in it", choices=("none", "cell"))
        weight_decay: float = 0.05  # no flag (or flag(0.05, "...", cli=False): a help, no flag)

`add_flags(parser, cls)` adds one argparse argument per flag field: --field-name (or `name=`), its
type from the annotation (int, float; a `list` is comma-separated; a bool that defaults to False is
a switch, any other bool --x/--no-x) or `type=`, its default the field's, `{default}` in its help
replaced by that default. `from_args(cls, args)` makes `cls` from the parsed flags.

A config that flags go over (TrainConfig over its YAML, PretrainConfig over train's --config) adds
them with `given_only=True`: a flag not given then stays None, `given_values()` holds the ones given,
and what they go over keeps the rest. Imports nothing of wbcnet, neither torch nor numpy.
"""
from __future__ import annotations

import argparse
import builtins
import copy
import dataclasses
from dataclasses import MISSING, field, fields


def flag(default=None, help: str = "", *, name: str | None = None, choices=None, metavar: str | None = None,
         append: bool = False, type=None, positional: bool = False, cli: bool = True, **kw):
    """A dataclass field with its flag: `name` (default --field-name), `choices`, `metavar`, `append`
    (a repeatable flag, its values a list), `type` (default from the annotation), `positional`, `cli`
    (False: a field that has no flag, its help for the documentation only); `kw`: any other
    add_argument keywords (required=True, ...). A list, dict or dataclass default is copied for each
    instance."""
    meta = {"help": help, "name": name, "choices": choices, "metavar": metavar, "append": append, "type": type,
            "positional": positional, "cli": cli, "kw": kw}
    if default is MISSING:  # a field the dataclass must be given
        return field(metadata=meta)
    if isinstance(default, (list, dict)) or (dataclasses.is_dataclass(default)
                                             and not isinstance(default, builtins.type)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_fields(cls) -> list:
    """The fields of the dataclass `cls` that are flags."""
    return [f for f in fields(cls) if f.metadata.get("cli")]


def field_default(f):
    """The field's default (None if it has none)."""
    if f.default is not MISSING:
        return f.default
    return None if f.default_factory is MISSING else f.default_factory()


def flag_name(cls, name: str) -> str:
    """The flag of field `name`: img_size -> --img-size, or the `name` it was declared with."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.metadata.get("name") or "--" + name.replace("_", "-")


def _kind(f) -> str:
    """The annotation's first type, by name: "int | None" -> "int", "list[str]" -> "list"."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.split("|")[0].split("[")[0].strip()


def _comma_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_flags(parser, *classes, names=None, given_only: bool = False, say_default: str = "") -> None:
    """One argument of `parser` per flag field of the dataclasses `classes`, in their order (or in
    the order of `names`, fields of any of them). `given_only`: a flag not given is None (but a
    switch, False), for a config that the given ones go over. `say_default`: added to every help,
    e.g. " (default: {default})"."""
    found = [f for cls in classes for f in flag_fields(cls)]
    if names is not None:
        by_name = {f.name: f for f in found}
        found = [by_name[n] for n in names]
    for f in found:
        m = f.metadata
        default = field_default(f)
        help = (m["help"] + say_default).replace("{default}", "none" if default is None else str(default))
        kw = dict(m["kw"], help=help)
        kind = _kind(f)
        if kind == "bool":
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif m["append"]:
            kw["action"] = "append"
        elif m["type"] is None and kind in ("int", "float", "list"):
            kw["type"] = {"int": int, "float": float, "list": _comma_list}[kind]
        kw.update({k: m[k] for k in ("type", "choices", "metavar") if m[k] is not None})
        if m["positional"]:
            parser.add_argument(f.name, **kw)
        else:
            kw["default"] = None if given_only and default is not False else default
            parser.add_argument(m["name"] or "--" + f.name.replace("_", "-"), dest=f.name, **kw)


def given_values(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` whose flags have a value in `args` (with given_only: were given)."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls) if getattr(args, f.name, None) is not None}


def from_args(cls, args: argparse.Namespace):
    """`cls` made from its flags in `args` (add_flags), the fields' defaults for the rest; checked as
    it is made."""
    return cls(**given_values(cls, args))


__all__ = ["flag", "flag_fields", "field_default", "flag_name", "add_flags", "given_values", "from_args"]
