"""Typed form fields: one definition drives the form, the validation and the API docs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from errors import UserError


class SpecError(UserError):
    """A value a user gave that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: type  # int, float, bool, str or list (of str)
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None  # the allowed values (text or whole numbers)
    optional: bool = False  # None is accepted
    advanced: bool = False  # shown folded away in a form

    def parse(self, value: Any, where: str) -> Any:
        """Return the value in this field's type, or raise SpecError naming `where`."""
        if value is None:
            if self.optional:
                return None
            raise SpecError(f"{where}: a value is required")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SpecError(f"{where}: must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            return self._number(value, where)
        if self.kind is str:
            if not isinstance(value, str):
                raise SpecError(f"{where}: must be text, got {value!r}")
            if self.choices and value not in self.choices:
                raise SpecError(f"{where}: must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        if self.kind is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"{where}: must be a list of names, got {value!r}")
            if not value:
                raise SpecError(f"{where}: name at least one")
            return list(value)
        raise TypeError(f"unsupported field kind {self.kind}")

    def _number(self, value: Any, where: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where}: must be a number, got {value!r}")
        if self.kind is int:
            if float(value) != int(value):
                raise SpecError(f"{where}: must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise SpecError(f"{where}: must be from {low:g} to {high:g}, got {value!r}")
        if self.choices and value not in self.choices:
            raise SpecError(f"{where}: must be one of {', '.join(map(str, self.choices))}")
        return value


def parse_fields(fields: tuple[Field, ...], given: Any, where: str) -> dict[str, Any]:
    """Validate a mapping against fields: unknown keys refused, missing ones defaulted."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise SpecError(f"{where}: must be an object, got {given!r}")
    known = {f.name: f for f in fields}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    return {
        f.name: f.parse(given[f.name], f"{where}.{f.name}") if f.name in given else f.default
        for f in fields
    }
