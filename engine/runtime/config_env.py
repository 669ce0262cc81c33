"""Settings from the environment, for containers and systemd drop-ins.

``VIGIL_<FIELD>`` sets a top-level setting and ``VIGIL_<SECTION>__<FIELD>`` (two
underscores between levels) a nested one: ``VIGIL_MQTT__HOST=broker.lan``,
``VIGIL_BATCH__LINGER_MS=20``, ``VIGIL_RULES='[/etc/vigil/flood.yaml]'``. Names are
case-insensitive. The value is read as one YAML value, so numbers, booleans, ``null``
and ``[lists]`` work as in the file. The environment wins over the file.

Only variables whose first part names a top-level setting are read (``VIGIL_MQTT__…``,
``VIGIL_DATA_DIR``): ``VIGIL_MQTT_PASSWORD``, the conventional home of the password
that ``mqtt.password_env`` names, is not a setting and is left alone. Below that first
part every name is validated like the file's keys, so ``VIGIL_MQTT__HOTS`` is an error
(``unknown field 'hots' (did you mean 'host'?)``), never silently ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rules.source import SourceError, parse_yaml

__all__ = ["PREFIX", "apply_environment"]

PREFIX = "VIGIL_"


def apply_environment(
    data: dict[str, Any], model: type[BaseModel], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """``data`` with the overrides of ``environ`` applied (a copy; ``data`` is left as
    it is), and which variable set each overridden path, for error messages."""
    out = copy.deepcopy(data)
    origins: dict[tuple[str, ...], str] = {}
    for variable in sorted(environ):
        if not variable.upper().startswith(PREFIX):
            continue
        path = tuple(part.lower() for part in variable[len(PREFIX) :].split("__"))
        if path[0] not in model.model_fields or not all(path):
            continue
        target = out
        for key in path[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            target = child
        target[path[-1]] = _value(variable, environ[variable])
        origins[path] = variable
    return out, origins


def _value(variable: str, text: str) -> Any:
    """The variable's text read as one YAML value (bounded like the files are)."""
    try:
        return parse_yaml(text, f"${variable}").data if text.strip() else text
    except SourceError:
        return text  # not YAML on its own (e.g. "a: b: c"): take it as the string it is
