"""Integers, numbers and booleans as JSON Schema defines them, for request bodies.

pydantic's lax mode also takes `"5"` and `true` as integers and `0` as `false`, where the
published schema says integer or boolean (schemathesis: a schema-violating request accepted);
its strict mode refuses `383.0`, which JSON Schema calls an integer (a schema-valid request
refused). These types are exactly the schema's: an integer is a JSON number with no fraction,
a number is any JSON number, a boolean is `true` or `false`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict
from pydantic_core import core_schema as cs


def _integer(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("Input should be an integer")
        return int(value)
    return value


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a number")
    return value


# As metadata after a type's constraints (`Annotated[float, Field(ge=0), JSON_NUMBER]`): put
# before them, pydantic publishes the constraints as `ge`/`le`, which JSON Schema ignores.
JSON_INTEGER = BeforeValidator(_integer)
JSON_NUMBER = BeforeValidator(_number)
JsonInt = Annotated[int, JSON_INTEGER]
JsonFloat = Annotated[float, JSON_NUMBER]
JsonBool = Annotated[bool, Strict()]


@dataclass(frozen=True)
class JsonInteger:
    """`Annotated[int, JsonInteger(ge, le)]`: JsonInt between ge and le, validated inside
    pydantic-core for a JSON integer (no Python call on the hot path: views:batch validates
    10,000 of them per request); `5.0` goes through a float branch."""

    ge: int
    le: int

    def _integral(self, value: float) -> int:
        if not value.is_integer() or not self.ge <= value <= self.le:
            raise ValueError("not an integer in range")
        return int(value)

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> cs.CoreSchema:
        return cs.union_schema(
            [
                cs.int_schema(ge=self.ge, le=self.le, strict=True),
                cs.no_info_after_validator_function(self._integral, cs.float_schema(strict=True)),
            ],
            custom_error_type="json_integer",
            custom_error_message=f"Input should be an integer from {self.ge} to {self.le}",
        )

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.ge, "maximum": self.le}


def exactly_one_of(*names: str) -> Any:
    """A json_schema_extra: exactly one of `names` is given, and not as null (the models'
    validators say the same: pydantic's Optional fields alone publish "any or none, or null")."""

    def extra(schema: dict[str, Any]) -> None:
        for name in names:
            prop = schema["properties"][name]
            (given,) = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
            prop.pop("default", None)
            prop.update(given)
        schema["oneOf"] = [{"required": [name]} for name in names]

    return extra


def given_once(model: Any, names: tuple[str, ...]) -> bool:
    """Whether exactly one of `names` was given, with a value (what exactly_one_of publishes)."""
    given = [n for n in names if n in model.model_fields_set]
    return len(given) == 1 and getattr(model, given[0]) is not None
