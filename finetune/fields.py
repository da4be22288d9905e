"""Typed form fields: one definition drives the form, the validation and the API docs.

Every request a user makes (training fields, evaluation options, combine and merge requests,
upload options, generation settings) is a frozen dataclass derived from `Request`: its FIELDS
say each value's type and bounds, `parse` checks a plain mapping against them, and `check`
adds the rules across fields. One mechanism, one wording of every refusal.
"""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar, Self

from errors import UserError


class SpecError(UserError):
    """A value a user gave that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: type  # int, float, bool, str, dict (of str to str) or list (of `item`)
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None  # the allowed values (text or whole numbers)
    optional: bool = False  # None is accepted
    advanced: bool = False  # shown folded away in a form
    item: type = str  # a list's items: str (names) or float (numbers)
    max_items: int | None = None  # a list's length
    max_chars: int | None = None  # a text's length

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
            if self.max_chars is not None and len(value) > self.max_chars:
                raise SpecError(f"{where}: at most {self.max_chars} characters")
            return value
        if self.kind is list:
            return self._list(value, where)
        if self.kind is dict:
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise SpecError(f"{where}: must be an object of names to names, got {value!r}")
            return dict(value)
        raise TypeError(f"unsupported field kind {self.kind}")

    def _list(self, value: Any, where: str) -> list:
        if self.item is str:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"{where}: must be a list of names, got {value!r}")
        elif not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise SpecError(f"{where}: must be a list of numbers, got {value!r}")
        if not value and not self.optional:
            raise SpecError(f"{where}: name at least one")
        if self.max_items is not None and len(value) > self.max_items:
            raise SpecError(f"{where}: at most {self.max_items}, got {len(value)}")
        return [self.item(v) for v in value]

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
    """Validate a mapping against fields: unknown keys refused, missing ones defaulted.
    `where` prefixes each field's name in messages ("" for a request's own arguments)."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise SpecError(f"{where or 'request'}: must be an object, got {given!r}")
    known = {f.name: f for f in fields}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SpecError(
            f"{_at(where, unknown[0])}: unknown field (known: {', '.join(sorted(known))})"
        )
    return {
        f.name: f.parse(given[f.name], _at(where, f.name)) if f.name in given else copy(f.default)
        for f in fields
    }


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


class Request:
    """Base of a frozen dataclass of user values: FIELDS, one per dataclass field, say how each
    is parsed; `check` (overridden) adds the rules across fields. A missing or None value takes
    its field's default; an unknown key is refused, never ignored."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()

    @classmethod
    def parse(cls, given: Any, where: str = "") -> Self:
        if isinstance(given, dict):
            given = {k: v for k, v in given.items() if v is not None}
        values = parse_fields(cls.FIELDS, given, where)
        for f in cls.FIELDS:  # a field without a default must be given
            if f.default is None and not f.optional and values[f.name] is None:
                raise SpecError(f"{_at(where, f.name)}: a value is required")
        request = cls(**values)
        request.check(where)
        return request

    def check(self, where: str) -> None:
        """Rules across fields; raise SpecError naming the field."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
