"""The typed run settings as kfp parameters, generated from their one declaration (:class:`anet.config.RunSettings`).

kfp reads a lightweight component's inputs from its function's signature when it compiles, and the
container runs that function's *source text*, whose executor passes only the parameters the ``def``
names. So the settings must be written into the source: a component writes ``**run_settings`` as the
last entry of its parameter list (one entry on its own line), and :func:`with_run_settings` rewrites
that line into one ``name: Optional[T] = None`` per field (or drops it), compiles the result and
registers its text with :mod:`linecache`, as attrs does for the methods it generates, so that
``inspect.getsource`` (and with it kfp) reads the generated ``def``. The pipeline's signature gets the
same parameters from :func:`run_setting_parameters`. A new field of ``RunSettings`` is therefore a new
parameter of the DAG and of the prepare component without another edit.
"""

# no `from __future__ import annotations`: kfp reads the real annotation objects
import inspect
import linecache
import textwrap
from collections.abc import Callable
from typing import Any, Optional, get_args

from pydantic import BaseModel

from anet.config import RunSettings

MARKER = "**run_settings,"  # the line a component writes where its run settings go
KINDS = (float, int, str, bool)  # what a kfp parameter can be (and a run setting may be)


def _kind(model: type[BaseModel], name: str) -> type:
    kinds = [t for t in get_args(model.model_fields[name].annotation) if t is not type(None)]
    if len(kinds) != 1 or kinds[0] not in KINDS or model.model_fields[name].default is not None:
        raise TypeError(f"{model.__name__}.{name}: a run setting is `T | None = None` with T one of "
                        f"{', '.join(k.__name__ for k in KINDS)}")
    return kinds[0]


def run_setting_parameters(model: type[BaseModel] = RunSettings) -> list[inspect.Parameter]:
    """One optional, unset-by-default parameter per field, in declaration order (the pipeline's signature)."""
    return [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                              annotation=Optional[_kind(model, name)])  # noqa: UP045 (kfp needs typing.Optional)
            for name in model.model_fields]


def with_run_settings(func: Callable[..., Any], model: type[BaseModel] | None = RunSettings) -> Callable[..., Any]:
    """``func`` with its ``**run_settings`` line replaced by ``model``'s fields as typed parameters.

    ``model=None`` drops the line: a component for a DAG without run settings (kfp.local 2.17 can run
    no task with an unset optional integer parameter). The function's body reads the settings by
    name, e.g. ``given = dict(locals())`` as its first line. Its module's globals are the generated
    function's globals, so the annotations resolve as they did in the literal ``def``.
    """
    lines = textwrap.dedent(inspect.getsource(func)).splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("def "))  # decorators are not ours
    lines = lines[start:]
    marked = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    if len(marked) != 1:
        raise ValueError(f"{func.__qualname__}: write `{MARKER}` once, on its own line, as the last parameter")
    indent = lines[marked[0]][: len(lines[marked[0]]) - len(lines[marked[0]].lstrip())]
    typed = [f"{indent}{p.name}: Optional[{get_args(p.annotation)[0].__name__}] = None,\n"
             for p in (run_setting_parameters(model) if model is not None else [])]
    source = "".join(lines[: marked[0]] + typed + lines[marked[0] + 1:])
    filename = f"<{func.__module__}.{func.__qualname__} with run settings {'from ' + model.__name__ if model else 'none'}>"
    namespace: dict[str, Any] = {"Optional": Optional, **func.__globals__}
    exec(compile(source, filename, "exec"), namespace)  # our own source, with typed parameters added
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    generated = namespace[func.__name__]
    generated.__module__, generated.__doc__ = func.__module__, func.__doc__
    return generated
