"""The one reader of text inputs: scenarios, sweeps, cards, profiles, --set values, traces.

Every reader goes through here so that each bad-bytes class is handled once:

- bytes that are not UTF-8 fail with the file, line and column, not a UnicodeDecodeError;
- nesting is bounded (`MAX_DEPTH`), so 1,000 nested brackets fail with a message, not a
  RecursionError, and YAML anchors cannot expand into an unbounded structure (`MAX_NODES`);
- duplicate YAML mapping keys are rejected (PyYAML silently keeps the last one);
- JSON's non-standard NaN and Infinity are rejected.

Errors are `InputError`s (or the subclass a caller passes) whose message starts with
``file:line:``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import yaml

from belusim.errors import InputError

MAX_DEPTH = 32  # a scenario is ~6 deep, a trace record 2; far below Python's recursion limit
MAX_NODES = 1_000_000  # containers and scalars in one YAML document, aliases counted each time
MAX_YAML_BYTES = 16 * 1024 * 1024  # a scenario, sweep, card or profile; traces are streamed


def _where(path: str | Path, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def read_bytes(path: str | Path, *, error: type[InputError] = InputError, limit: int | None = None) -> bytes:
    path = Path(path)
    try:
        if limit is not None and path.stat().st_size > limit:
            raise error(f"{path}: {path.stat().st_size:,} bytes; at most {limit:,} expected for this input")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None


def decode(data: bytes, where: str | Path, *, line: int | None = None,
           error: type[InputError] = InputError) -> str:
    """UTF-8 text (a leading BOM dropped); a bad byte is named with its line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        ln = (line or 1) + data.count(b"\n", 0, e.start)
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{_where(where, ln)}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {col}); "
                    "save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | Path, *, error: type[InputError] = InputError, limit: int | None = None) -> str:
    return decode(read_bytes(path, error=error, limit=limit), path, error=error)


def iter_lines(path: str | Path, *, error: type[InputError] = InputError) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, decoded one line at a time (for big traces)."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError:
        read_bytes(path, error=error)  # raises the right message
        raise
    with fh:
        for ln, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            text = decode(raw, path, line=ln, error=error)
            if text.strip():
                yield ln, text.rstrip("\r\n")


def check_shape(data: Any, where: str, *, error: type[InputError] = InputError) -> Any:
    """Fail if `data` nests deeper than MAX_DEPTH or holds more than MAX_NODES values."""
    nodes = 0
    stack = [(data, 1)]
    while stack:
        x, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise error(f"{where}: more than {MAX_NODES:,} values (YAML anchors expanding?)")
        if isinstance(x, (dict, list)):
            if depth > MAX_DEPTH:
                raise error(f"{where}: nested more than {MAX_DEPTH} levels deep")
            items = x.values() if isinstance(x, dict) else x
            stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
            nodes += len(x)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON; write null or a number")


# json.loads(text, parse_constant=...) is JSONDecoder(parse_constant=...).decode(text): one
# decoder made once (a trace's lines made one each)
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_json(text: str, where: str | Path, *, line: int | None = None,
               error: type[InputError] = InputError) -> Any:
    """One JSON document (a whole file or one JSONL line)."""
    at = _where(where, line)
    # a document cannot nest deeper than its count of brackets: skip the walk when few
    shallow = text.count("[") + text.count("{") <= MAX_DEPTH
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        ln = e.lineno if line is None else line + e.lineno - 1
        raise error(f"{_where(where, ln)}: invalid JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:
        raise error(f"{at}: invalid JSON: {e}") from None
    except RecursionError:
        raise error(f"{at}: nested more than {MAX_DEPTH} levels deep") from None
    return data if shallow else check_shape(data, at, error=error)


def read_json(path: str | Path, *, error: type[InputError] = InputError) -> Any:
    return parse_json(read_text(path, error=error, limit=MAX_YAML_BYTES), path, error=error)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (merge keys `<<` may be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key; SafeLoader reports it below
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str | Path, *, error: type[InputError] = InputError,
               lines: bool = True) -> Any:
    """One YAML document; a syntax error names its line (unless `lines` is off: a --set value)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = _where(where, mark.line + 1 if mark is not None and lines else None)
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise error(f"{at}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise error(f"{where}: invalid YAML: {e}") from None
    except RecursionError:
        raise error(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    return check_shape(data, str(where), error=error)


def read_yaml(path: str | Path, *, error: type[InputError] = InputError) -> Any:
    return parse_yaml(read_text(path, error=error, limit=MAX_YAML_BYTES), path, error=error)
