"""Rules on items that failed field validation, without spurious errors.

An instance with a bad `vrid` can still have a wrong `advert_interval` worth reporting in the same
pass. The item is rebuilt without its bad keys (required ones get a placeholder), and each rule
reads it through a guard: a rule that touches a bad key is abandoned, so every reported problem
rests on valid input only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, ValidationError

from director.config.yamlpos import Path

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Item(Generic[M]):
    index: int
    model: M
    bad: frozenset[str]  # top-level keys that failed validation (empty: the item is valid)


class _BadKeyRead(Exception):
    pass


class _Guard:
    """Reads through to the model, except for bad keys; properties run against the guard too."""

    def __init__(self, model: BaseModel, bad: frozenset[str]) -> None:
        self._model = model
        self._bad = bad

    def __getattr__(self, name: str) -> Any:
        if name in self._bad:
            raise _BadKeyRead(name)
        prop = getattr(type(self._model), name, None)
        if isinstance(prop, property) and prop.fget is not None:
            return prop.fget(self)
        return getattr(self._model, name)


def validate_items(
    model: type[M], items: Any, placeholders: dict[str, Any]
) -> tuple[list[Item[M]], list[Item[M]]]:
    """(valid items, partially valid items) of a list in the raw document."""
    valid: list[Item[M]] = []
    partial: list[Item[M]] = []
    for i, raw in enumerate(items if isinstance(items, list) else []):
        try:
            valid.append(Item(i, model.model_validate(raw), frozenset()))
            continue
        except ValidationError as exc:
            if not isinstance(raw, dict):
                continue
            bad = frozenset(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        repaired = {k: v for k, v in raw.items() if k not in bad}
        repaired.update({k: v for k, v in placeholders.items() if k in bad})
        try:
            partial.append(Item(i, model.model_validate(repaired), bad))
        except ValidationError:
            continue  # broken beyond what placeholders mend: field errors say it all
    return valid, partial


Rule = Callable[[Path, M], Iterator[Any]]


def run_rule(rule: Callable[[Path, Any], Iterator[Any]], at: Path, item: Item[M]) -> list[Any]:
    subject: Any = item.model if not item.bad else cast(Any, _Guard(item.model, item.bad))
    try:
        return list(rule(at, subject))
    except _BadKeyRead:
        return []
