"""The base of every rule-file and registry model: frozen, no unknown keys, with hints.

An unknown key is reported as ``unknown field 'warn_levle' (did you mean
'warning_level'?)`` at the key's own position (see ``errors.problems_from_validation``),
instead of pydantic's bare "Extra inputs are not permitted".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from rules.errors import did_you_mean

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """Frozen, ``extra="forbid"``; unknown keys become ``unknown_field`` errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown field {quoted}{hint}",
                        {
                            "field": key,
                            "quoted": repr(str(key)),
                            "hint": did_you_mean(str(key), known),
                        },
                    )
        return data
