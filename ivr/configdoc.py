"""A YAML configuration document read safely, with the line of every key.

Shared by ``ivr.config`` and ``ivr.prompts`` (the prompt manifest): strict UTF-8, no
YAML aliases (an operator's file needs none, and they are how "billion laughs" files
explode), bounded nesting, and every error a ``ConfigError`` naming the dotted key and
the line (SPEC R22).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, overload

import yaml

# YAML nesting deeper than this is refused (the deepest real key is 4 levels down).
MAX_DEPTH = 32


class ConfigError(Exception):
    """A configuration problem, with the key path and line when known."""

    def __init__(self, message: str, key: str = "", line: int | None = None) -> None:
        where = key or "config"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{where}: {message}")
        self.key = key
        self.line = line


class Doc:
    """A YAML mapping with the line of every key, for error messages."""

    def __init__(self, node: yaml.MappingNode, path: str,
                 lines: dict[str, int] | None = None) -> None:
        self.path = path
        self.line = node.start_mark.line + 1
        self.lines: dict[str, int] = {} if lines is None else lines
        self.items: dict[str, tuple[yaml.Node, int]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise ConfigError("keys must be plain words", path, k.start_mark.line + 1)
            if k.value in self.items:
                raise ConfigError("duplicate key", self.key(k.value), k.start_mark.line + 1)
            self.items[k.value] = (v, k.start_mark.line + 1)
            self.lines[self.key(k.value)] = k.start_mark.line + 1
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def err(self, name: str, message: str) -> ConfigError:
        line = self.items[name][1] if name in self.items else self.line
        return ConfigError(message, self.key(name), line)

    def has(self, name: str) -> bool:
        return name in self.items and not is_null(self.items[name][0])

    def node(self, name: str) -> yaml.Node:
        self.used.add(name)
        return self.items[name][0]

    def scalar(self, name: str, default: str | None = None) -> str:
        if not self.has(name):
            self.used.add(name)
            if default is None:
                raise self.err(name, "is required")
            return default
        n = self.node(name)
        if not isinstance(n, yaml.ScalarNode):
            raise self.err(name, "must be a single value")
        return str(n.value)

    def opt(self, name: str) -> str | None:
        if not self.has(name):
            self.used.add(name)
            return None
        return self.scalar(name)

    @overload
    def sub(self, name: str) -> Doc: ...
    @overload
    def sub(self, name: str, required: Literal[True]) -> Doc: ...
    @overload
    def sub(self, name: str, required: bool) -> Doc | None: ...

    def sub(self, name: str, required: bool = True) -> Doc | None:
        if not self.has(name):
            self.used.add(name)
            if required:
                raise self.err(name, "is required")
            return None
        n = self.node(name)
        if not isinstance(n, yaml.MappingNode):
            raise self.err(name, "must be a mapping")
        return Doc(n, self.key(name), self.lines)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if not self.has(name):
            self.used.add(name)
            return default
        n = self.node(name)
        if isinstance(n, yaml.ScalarNode):
            return (str(n.value),)
        if not isinstance(n, yaml.SequenceNode) or not all(
            isinstance(i, yaml.ScalarNode) for i in n.value
        ):
            raise self.err(name, "must be a list of values")
        return tuple(str(i.value) for i in n.value)

    def children(self) -> Iterator[tuple[str, Doc]]:
        for name in list(self.items):
            yield name, self.sub(name)

    def check_unknown(self) -> None:
        for name in self.items:
            if name not in self.used:
                raise self.err(name, "unknown key")


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``1.5h``, ``7d``, ``250ms`` or plain seconds -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def duration(doc: Doc, name: str, default: str | None, lo: float | None = None,
              hi: float | None = None) -> float:
    raw = doc.scalar(name, default)
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise doc.err(name, str(exc)) from None
    if lo is not None and value < lo:
        raise doc.err(name, f"must be at least {lo:g}s")
    if hi is not None and value > hi:
        raise doc.err(name, f"must be at most {hi:g}s")
    return value


def opt_duration(doc: Doc, name: str, lo: float | None = None,
                 hi: float | None = None) -> float | None:
    if doc.opt(name) is None:
        return None
    return duration(doc, name, None, lo, hi)


def integer(doc: Doc, name: str, default: int | None, lo: int | None = None,
            hi: int | None = None) -> int:
    raw = doc.scalar(name, None if default is None else str(default))
    try:
        value = int(raw)
    except ValueError:
        raise doc.err(name, f"must be a whole number, not {raw!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise doc.err(name, f"must be between {lo} and {hi}")
    return value


def boolean(doc: Doc, name: str, default: bool) -> bool:
    raw = doc.scalar(name, "true" if default else "false").lower()
    if raw in ("true", "yes", "on", "1"):
        return True
    if raw in ("false", "no", "off", "0"):
        return False
    raise doc.err(name, f"must be true or false, not {raw!r}")


class SafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (no "billion laughs") and deep nesting (no
    RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise ConfigError(
                "YAML aliases (*name) are not supported: write the value out in full",
                "", self._line())
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", "", self._line())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _line(self) -> int | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        return None if mark is None else mark.line + 1


def yaml_error(exc: yaml.YAMLError | RecursionError, text: str) -> ConfigError:
    """One line, with the line number, for whatever PyYAML raised."""
    if isinstance(exc, RecursionError):
        return ConfigError(f"nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        return ConfigError(f"not valid YAML: {exc.reason}: {shown}", "",
                           text[: exc.position].count("\n") + 1)
    mark = getattr(exc, "problem_mark", None)
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    message = ", ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
    return ConfigError(f"not valid YAML: {message}", "",
                       mark.line + 1 if mark is not None else None)


def decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{name} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte {exc.start}",
            "", line) from None


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
