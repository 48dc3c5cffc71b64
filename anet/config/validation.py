"""Config validation errors as one readable line: unknown keys name the closest valid key, bad values
name where they came from (``key=value (command line)`` or the profile file)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from anet.errors import UserError

M = TypeVar("M", bound=BaseModel)


class ConfigError(UserError, ValueError):
    """A user mistake in a config file or an override: the message is one readable line."""


def unknown_key_message(prefix: str, key: str, valid: list[str]) -> str:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
    return f"unknown config key {full!r}{hint} (valid here: {', '.join(valid)})"


def validate(root: type[M], raw: dict[str, Any], source: str,
             origins: Mapping[str, tuple[str, Any]] | None = None) -> M:
    """Validate ``raw`` as ``root``; ``origins`` maps each key set on top of the profile ``source`` to
    (where, value). A failure is one :class:`ConfigError` line naming where each bad value came from."""
    try:
        return root.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(root, exc, source, origins or {})) from None


def _format_errors(root: type[BaseModel], exc: ValidationError, source: str,
                   origins: Mapping[str, tuple[str, Any]]) -> str:
    """One line; each problem names where its value came from: ``key=value (command line)`` or the file."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(root, loc[:-1])
            lines.append(f"{source}: {unknown_key_message('.'.join(loc[:-1]), loc[-1], list(model.model_fields))}")
        elif not loc:  # a check across sections (model_validator): its message names the keys
            keys = [key for key in origins if key in msg]
            lines.append(f"{msg} ({', '.join(f'{k}={origins[k][1]}, {origins[k][0]}' for k in keys)})" if keys
                         else f"{source}{' + ' + ', '.join(sorted(origins)) if origins else ''}: {msg}")
        else:
            lines.append(_located(loc, msg, err.get("input"), source, origins))
    return "; ".join(lines)


def _located(loc: list[str], msg: str, value: Any, source: str, origins: Mapping[str, tuple[str, Any]]) -> str:
    """``stage_one.lr=inf (command line): ...`` when a key set on top of the profile holds the bad value,
    else ``configs/x.yaml: stage_one.lr: ... (got inf)``."""
    dotted = ".".join(loc)
    keys = sorted((k for k in origins if k == dotted or k.startswith(dotted + ".") or dotted.startswith(k + ".")),
                  key=lambda k: k != dotted)
    if not keys:
        return f"{source}: {dotted}: {msg} (got {value!r})"
    where, given = origins[keys[0]]
    return f"{keys[0]}={given} ({where}): {msg}"


def _model_at(root: type[BaseModel], path: list[str]) -> type[BaseModel]:
    model: type[BaseModel] = root
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model
