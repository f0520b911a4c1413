"""YAML loading that remembers where every key and value came from.

Validation errors must name FILE:LINE:COL, so the loader keeps a map from key path to the
position of the value (and of the key, for "unknown key" errors) while it builds plain Python
data. Duplicate keys are an error here: PyYAML would silently keep the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class Document:
    data: Any
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    duplicates: list[tuple[Path, Position]] = field(default_factory=list)

    def position(self, path: Path, *, key: bool = False) -> Position:
        """The position of `path`, or of its nearest ancestor that the document has."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Position(1, 1))


class YamlSyntaxError(Exception):
    """The text is not YAML; str() is `LINE:COL: problem`."""


def _pos(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def load_document(text: str) -> Document:
    try:
        # The constructor already scans for unprintable characters, so it sits in the try too.
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            doc = Document(data=None)
            if root is not None:
                doc.data = _build(loader, root, (), doc)
                doc.values[()] = _pos(root)
            return doc
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        raise YamlSyntaxError(f"{where}{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc).replace("\n", " ")) from None


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path, doc: Document) -> Any:
    doc.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int):
                key = str(key)
            child = (*path, key)
            if key in out:
                doc.duplicates.append((child, _pos(key_node)))
            doc.keys[child] = _pos(key_node)
            out[key] = _build(loader, value_node, child, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
