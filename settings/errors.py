"""A bad setting as the user wrote it: one line per variable, for every entry point.

pydantic's own report names the field (`worker_concurrency`), not the variable the user
set (`WORKER_CONCURRENCY`), spans several lines per error and links to its website. The
worker, `make run` and every `apiworker` command print these lines instead, and exit 2,
a usage error:

    WORKER_CONCURRENCY='abc': must be an integer
    HTTP_READ_TIMEOUT='-1': must be greater than 0

A check that spans several variables (the root's and each section's model validators)
names them in its own message, which is printed as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, SecretStr, ValidationError

from telemetry.redact import MASK, masked_url

#: The exit status of a usage error: a bad setting or option (as click's).
USAGE_EXIT_CODE = 2

# What each of pydantic's error types allows, in words; `{…}` from the error's context.
_ALLOWED: Mapping[str, str] = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false (1/0, yes/no, on/off)",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "path_not_file": "must name an existing file",
    "json_invalid": "must be valid JSON",
    "list_type": "must be a list",
}


_LEADING_NAME = re.compile(r"^([A-Z][A-Z0-9_]*): ")
_NAMED = re.compile(r"^([A-Z0-9_]+)(?:\[[^]]*\])?=")


class ConfigurationError(Exception):
    """Settings the service cannot start with; `lines` says what, one per variable."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines)
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _variable(model: type[BaseModel], field: str) -> str:
    """The environment name the user set for `field`: its own, or the alias they used
    (HTTP_POOL_SIZE follows WORKER_CONCURRENCY unless set itself)."""
    info = model.model_fields.get(field)
    names = [field]
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        names = [str(choice) for choice in info.validation_alias.choices]
    set_names = {name.lower() for name in os.environ}
    chosen = next((name for name in names if name.lower() in set_names), field)
    return chosen.upper()


def _shown(model: type[BaseModel], field: str, value: Any) -> str:
    """The value as it may be printed: secrets masked, a URL's password masked."""
    info = model.model_fields.get(field)
    if info is not None and "SecretStr" in repr(info.annotation):
        return repr(MASK)
    if isinstance(value, SecretStr):
        return repr(MASK)
    text = value if isinstance(value, str) else str(value)
    return repr(masked_url(text) if "://" in text else text)


def _allowed(error: Mapping[str, Any]) -> str:
    template = _ALLOWED.get(error["type"])
    # 0.0 reads as 0: a bound given as a float in the model is still a plain number.
    context = {
        key: f"{value:g}" if isinstance(value, float) else value
        for key, value in error.get("ctx", {}).items()
    }
    if template is not None:
        try:
            return template.format(**context)
        except KeyError:
            pass
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message[:1].lower() + message[1:]


def _line(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    if not loc:
        # A model validator: its message names the variables itself; one that starts
        # with `NAME: ` gets the value the user gave it.
        message = str(error["msg"]).removeprefix("Value error, ")
        named = _LEADING_NAME.match(message)
        given = error.get("input")
        if named and isinstance(given, Mapping) and named.group(1).lower() in given:
            field = named.group(1).lower()
            value = _shown(model, field, given[field])
            return f"{named.group(1)}={value}: {message[named.end() :]}"
        return message
    field = loc[0]
    name = _variable(model, field)
    if len(loc) > 1:  # an item of a list setting, e.g. one of REDIS_SENTINELS
        name = f"{name}[{', '.join(loc[1:])}]"
    return f"{name}={_shown(model, field, error.get('input'))}: {_allowed(error)}"


def lines_of(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One line per bad variable of `model` (a settings section or the root)."""
    return [_line(model, error) for error in exc.errors(include_url=False)]


def merged(groups: Iterable[list[str]]) -> list[str]:
    """The lines of several sections, each variable once (two sections may read one)."""
    seen: dict[str, str] = {}
    for lines in groups:
        for line in lines:
            named = _NAMED.match(line)
            seen.setdefault(named.group(1) if named else line, line)
    return list(seen.values())
