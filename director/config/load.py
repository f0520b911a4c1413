"""Reading a config file: YAML with positions -> typed models -> cross-field rules.

Every problem is collected before anything is reported, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from director.config.models import Config, Instance, Service, SyncGroup
from director.config.partial import validate_items
from director.config.rules import (
    GROUP_PLACEHOLDERS,
    INSTANCE_PLACEHOLDERS,
    SERVICE_PLACEHOLDERS,
    Diagnostic,
    check_all,
    check_ipvs,
)
from director.config.yamlpos import Document, Path, YamlSyntaxError, load_document


class ConfigUnreadable(Exception):
    """The file is missing, unreadable or not YAML (exit code 2)."""


class ConfigInvalid(Exception):
    """The file is YAML but breaks the contract (exit code 1)."""

    def __init__(self, report: Report) -> None:
        super().__init__("\n".join(report.lines()))
        self.report = report


@dataclass
class Report:
    filename: str
    document: Document
    diagnostics: list[Diagnostic] = field(default_factory=list)
    config: Config | None = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def lines(self) -> list[str]:
        return [format_diagnostic(self.filename, self.document, d) for d in self.diagnostics]


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def format_diagnostic(filename: str, document: Document, diag: Diagnostic) -> str:
    pos = document.position(diag.path, key=diag.at_key)
    kind = "warning: " if diag.severity == "warning" else ""
    return f"{filename}:{pos.line}:{pos.column}: {format_path(diag.path)}: {kind}{diag.message}"


def check_text(text: str, filename: str = "<config>") -> Report:
    """Validate config text; never raises for a bad config (only for text that is not YAML)."""
    try:
        document = load_document(text)
    except YamlSyntaxError as exc:
        raise ConfigUnreadable(f"{filename}:{exc}") from None
    report = Report(filename, document)
    data = {} if document.data is None else document.data
    for path, _ in document.duplicates:
        report.diagnostics.append(
            Diagnostic(
                path, "key repeated in the same mapping (YAML keeps only the last)", at_key=True
            )
        )
    if not isinstance(data, dict):
        report.diagnostics.append(
            Diagnostic((), "the config must be a mapping with node, vrrp and/or services sections")
        )
        return report

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        report.diagnostics.extend(_from_pydantic(exc, data, ()))
        config = None

    # Rules run on whatever validated on its own, so one bad instance hides nothing else.
    vrrp = data.get("vrrp") if isinstance(data.get("vrrp"), dict) else {}
    assert isinstance(vrrp, dict)
    instances = validate_items(Instance, vrrp.get("instances"), INSTANCE_PLACEHOLDERS)
    groups, _ = validate_items(SyncGroup, vrrp.get("sync_groups"), GROUP_PLACEHOLDERS)
    services = validate_items(Service, data.get("services"), SERVICE_PLACEHOLDERS)
    names, vips = _declared(vrrp.get("instances"))
    report.diagnostics.extend(
        check_all(instances, groups, services, instance_names=names, vips=vips)
    )
    if config is not None:
        report.diagnostics.extend(check_ipvs(config.ipvs, names))

    report.diagnostics.sort(key=lambda d: _sort_key(document, d))
    if not report.errors:
        report.config = config
    return report


def load_config(path: str | FilePath) -> Report:
    """Load and validate a file. Raises ConfigUnreadable or ConfigInvalid; the report carries
    the config and any warnings."""
    try:
        text = FilePath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigUnreadable(f"{path}: cannot read: {reason}") from None
    report = check_text(text, str(path))
    if report.errors:
        raise ConfigInvalid(report)
    return report


def _sort_key(document: Document, diag: Diagnostic) -> tuple[int, int]:
    pos = document.position(diag.path, key=diag.at_key)
    return (pos.line, pos.column)


def _declared(items: Any) -> tuple[set[str], set[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Instance names and VIPs as written, whether or not their instance is valid."""
    names: set[str] = set()
    vips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("name"), str):
            names.add(item["name"])
        for vip in item.get("addresses") or [] if isinstance(item.get("addresses"), list) else []:
            text = vip.get("address") if isinstance(vip, dict) else vip
            with contextlib.suppress(ValueError, TypeError):
                vips.add(ipaddress.ip_interface(str(text).strip()).ip)
    return names, vips


# ---------------------------------------------------------------- pydantic errors -> diagnostics


def _from_pydantic(exc: ValidationError, data: Any, base: Path) -> Iterable[Diagnostic]:
    seen: set[Path] = set()
    for error in exc.errors(include_url=False):
        path = _data_path(data, tuple(error["loc"]), error["type"])
        if path in seen:
            continue  # a union reports once per member; the first says enough
        seen.add(path)
        if error["type"] == "extra_forbidden":
            yield Diagnostic((*base, *path), _unknown_key(path), at_key=True)
        elif error["type"] == "missing":
            yield Diagnostic((*base, *path), "required key is missing")
        else:
            yield Diagnostic((*base, *path), _message(error["msg"]))


def _data_path(data: Any, loc: tuple[Any, ...], kind: str) -> Path:
    """pydantic's loc, less the validator and union tags it inserts between real keys."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]
        elif last and kind == "missing" and isinstance(part, str):
            out.append(part)
    return tuple(out)


def _message(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg[:1].lower() + msg[1:]


def _unknown_key(path: Path) -> str:
    key = str(path[-1])
    allowed = sorted(_allowed_keys(path[:-1]))
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = f"; expected one of: {', '.join(allowed)}" if allowed and not close else ""
    return f"unknown key {key!r}{hint}{listed}"


def _allowed_keys(path: Path) -> set[str]:
    model: type[BaseModel] | None = Config
    for part in path:
        if model is None:
            return set()
        if isinstance(part, str):
            info = model.model_fields.get(part)
            model = _model_in(info.annotation) if info is not None else None
    return set(model.model_fields) if model is not None else set()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through Optional, list and Annotated."""
    origin = get_origin(annotation)
    if origin in (Annotated, list, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
