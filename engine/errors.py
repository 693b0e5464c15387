"""User-facing input errors: one clear message that names the key and the fix.

Anything the user can fix in the input file or on the command line raises
:class:`InputError` (a ``ValueError``, so library callers that catch
``ValueError`` keep working). The CLI prints it with no traceback and exits
with status 2. :func:`format_validation_error` turns a pydantic
``ValidationError`` against the input schema into the same kind of message.
"""
from __future__ import annotations

import difflib
import typing
from typing import Any, Iterable, Optional, Sequence

from pydantic import BaseModel, ValidationError


class InputError(ValueError):
    """Bad user input (input file, ``--set`` override, structure file); the message says what to fix."""

    exit_status = 2


def exit_status(exc: BaseException) -> int:
    """The process exit status for an exception, as the CLI reports it.

    2 for input errors (InputError, pydantic's ValidationError, any ValueError,
    a missing file), an exception's own ``exit_status`` (SimulationError: 3), 1 else.
    Used by the MPI abort handler so the status survives MPI_Abort.
    """
    status = getattr(exc, "exit_status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return 2
    return 1


# words people use for a valid value that difflib would not find
_SYNONYMS = {"gpu": "cuda", "fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "double": "float64",
             "single": "float32", "nvt": "langevin", "nosehoover": "nose-hoover", "nose_hoover": "nose-hoover",
             "velocity-verlet": "nve", "verlet": "nve", "minimize": "fire"}


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` did you mean `X`?`` for the closest choice, or ``""`` when nothing is close."""
    choices = [str(c) for c in choices]
    synonym = _SYNONYMS.get(str(word).lower())
    if synonym in choices:
        return f" did you mean `{synonym}`?"
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not close:  # case slips ("Timestep_FS") and prefixes ("timestep" for "timestep_fs")
        low = {c.lower(): c for c in choices}
        if str(word).lower() in low:
            close = [low[str(word).lower()]]
        else:
            close = [c for c in choices if c.lower().startswith(str(word).lower()) and len(str(word)) >= 3][:1]
    return f" did you mean `{close[0]}`?" if close else ""


def key_path(loc: Sequence[Any]) -> str:
    """``('dynamics', 'timestep_fs')`` -> ``dynamics.timestep_fs``; list indices as ``repeat[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _model_in(annotation: Any) -> Optional[type[BaseModel]]:
    """The pydantic model inside ``annotation`` (bare, Optional[...] or Union[...]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def model_at(root: type[BaseModel], loc: Sequence[Any]) -> Optional[type[BaseModel]]:
    """The schema model that owns the keys at ``loc`` (None inside dicts/lists/scalars)."""
    model: Optional[type[BaseModel]] = root
    for part in loc:
        if isinstance(part, int) and model is not None and model is not root:
            continue  # an index into a list of sections (``stages[1]``): the same model
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _model_in(model.model_fields[part].annotation)
    return model


def _field(root: type[BaseModel], loc: Sequence[Any]):
    parent = model_at(root, loc[:-1]) if loc else None
    if parent is not None and isinstance(loc[-1], str):
        return parent.model_fields.get(loc[-1])
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_BOUNDS = {
    "greater_than": "> {gt}",
    "greater_than_equal": ">= {ge}",
    "less_than": "< {lt}",
    "less_than_equal": "<= {le}",
}

_TYPES = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number (an integer)",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list, e.g. [1, 2, 3]",
    "dict_type": "a mapping (key: value pairs)",
    "model_type": "a mapping (key: value pairs)",
    "model_attributes_type": "a mapping (key: value pairs)",
}


def describe_error(error: dict, root: type[BaseModel]) -> str:
    """One line for one pydantic error dict, naming the key path and the fix."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    value = error.get("input")
    path = key_path(loc)
    field = _field(root, loc)
    about = f"; {path} is the {field.description}" if field is not None and field.description else ""

    if kind == "extra_forbidden":
        parent = model_at(root, loc[:-1])
        valid = list(parent.model_fields) if parent is not None else []
        where = f"`{key_path(loc[:-1])}`" if loc[:-1] else "the top level"
        hint = suggest(str(loc[-1]), valid)
        return f"unknown key `{path}`;{hint} valid keys in {where}: {', '.join(valid)}"
    if kind == "missing":
        return f"missing required key `{path}`{about}; add it to the input file"
    if kind in _BOUNDS:
        bound = _BOUNDS[kind].format(**{k: v for k, v in ctx.items()})
        return f"`{path}` = {_show(value)} is out of range: it must be {bound}{about}"
    if kind in _TYPES:
        return f"`{path}` must be {_TYPES[kind]}, got {_show(value)}{about}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        options = [o.strip().strip("'\"") for o in str(expected).replace(" or ", ",").split(",") if o.strip()]
        hint = suggest(str(value), options) if isinstance(value, str) else ""
        return f"`{path}` = {_show(value)} is not allowed: use one of {expected}.{hint}"
    if kind in ("too_short", "too_long"):
        return f"`{path}` has the wrong length: {error.get('msg')}"
    msg = str(error.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if loc and f"{path}" not in msg:
        return f"`{path}`: {msg}"
    return msg


def format_validation_error(err: ValidationError, root: Optional[type[BaseModel]] = None) -> str:
    """One message for all problems in ``err``, one line per problem, each naming its key path.

    ``root`` is the schema model validated (default: the input file's RunConfig).
    Union members produce one pydantic error each; only the first per key is kept.
    """
    if root is None:
        from .config import RunConfig

        root = RunConfig
    lines: list[str] = []
    seen: set = set()
    for error in err.errors(include_url=False):
        loc = tuple(p for p in error.get("loc", ()) if not _is_union_tag(p))
        if loc in seen:
            continue
        seen.add(loc)
        lines.append(describe_error({**error, "loc": loc}, root))
    if len(lines) == 1:
        return f"invalid input: {lines[0]}"
    return "invalid input:\n" + "\n".join(f"  - {line}" for line in lines)


def _is_union_tag(part: Any) -> bool:
    """pydantic inserts union-member tags such as ``literal['auto']`` or ``list[int]`` into locs."""
    return isinstance(part, str) and ("[" in part or part in ("int", "float", "str", "bool"))
