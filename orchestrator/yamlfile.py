"""Reading YAML files the way people write them for this project.

YAML 1.1 reads ``NO`` (Norway's country code) as the boolean false; here only ``true`` and
``false`` are booleans (as in YAML 1.2), so country codes stay strings.
"""

from __future__ import annotations

import os
import re

import yaml

from orchestrator.errors import InvalidSpecError

__all__ = ["read_yaml"]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``NO`` (Norway) is a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def read_yaml(path: str | os.PathLike[str], *, field: str) -> object:
    """Read and parse a YAML (or JSON) file; errors are ``InvalidSpecError(field, ...)``
    naming the file, and the line and column of a syntax error."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise InvalidSpecError(field, f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidSpecError(field, f"{source} is not valid YAML{where}") from exc
    if data is None:
        raise InvalidSpecError(field, f"{source} is empty")
    return data
