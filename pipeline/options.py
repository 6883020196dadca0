"""Declared stage options and the value kinds that check and convert them.

A kind is a callable `kind(value, context) -> converted value` that raises OptionError with a short
message ("expected an integer, got 'abc'"); the config loader adds the file, line and stage.
"""
import difflib
import math
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import OptionError

REQUIRED = object()


@dataclass(frozen=True)
class OptionContext:
    """What option checks may need to know about the config they come from."""

    base_dir: Path


@dataclass(frozen=True)
class Option:
    name: str
    kind: "Kind"
    doc: str
    default: Any = REQUIRED
    secret: bool = False

    @property
    def required(self):
        return self.default is REQUIRED


class Kind:
    """A named check: `describe` is what `pipeline stages` shows."""

    def __init__(self, describe: str, check: Callable[[Any, OptionContext], Any], is_template=False,
                 is_path=False):
        self.describe = describe
        self._check = check
        self.is_template = is_template
        self.is_path = is_path or is_template  # a default given as text is resolved like a written value

    def __call__(self, value, context):
        return self._check(value, context)

    def __repr__(self):
        return f"Kind({self.describe})"


class FromEnvironment(str):
    """A plain YAML value that came from `${VAR}`: its text as written, and `typed`, what YAML makes of it
    (so `capture_id: ${ID}` can be a number while `token: ${TOKEN}` keeps a token of digits as it is)."""

    typed: Any

    def __new__(cls, text, typed):
        value = super().__new__(cls, text)
        value.typed = typed
        return value

    def __reduce__(self):
        return (FromEnvironment, (str(self), self.typed))


def typed(value):
    """What YAML makes of a value, for kinds that want numbers or booleans: `${VAR}` typed wherever it stands,
    in lists too (`matrix: [[1, 0, 0, ${DX}], ...]`)."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    return value.typed if isinstance(value, FromEnvironment) else value


def shown(value):
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value):
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text():
    def check(value, context):
        if not isinstance(value, str):
            raise OptionError(f"expected a string, got {_type_name(value)} {shown(value)}")
        return str(value)
    return Kind("string", check)


def integer(minimum=None, maximum=None):
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")

    def check(value, context):
        value = typed(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise OptionError(f"expected an integer, got {_type_name(value)} {shown(value)}")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            raise OptionError(f"expected an integer {' and '.join(bounds)}, got {value}")
        return value
    return Kind(" ".join(["integer", *bounds]), check)


def number(minimum=None, maximum=None):
    def check(value, context):
        value = typed(value)
        if not is_number(value) or not math.isfinite(value):
            raise OptionError(f"expected a finite number, got {_type_name(value)} {shown(value)}")
        if minimum is not None and value < minimum:
            raise OptionError(f"expected a number >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise OptionError(f"expected a number <= {maximum}, got {value}")
        return float(value)
    if minimum is not None and maximum is not None:
        return Kind(f"number from {minimum} to {maximum}", check)
    return Kind("number" if minimum is None and maximum is None else
                f"number >= {minimum}" if maximum is None else f"number <= {maximum}", check)


def boolean():
    def check(value, context):
        value = typed(value)
        if not isinstance(value, bool):
            raise OptionError(f"expected true or false, got {_type_name(value)} {shown(value)}")
        return value
    return Kind("boolean", check)


def choice(*values):
    def check(value, context):
        value = str(value) if isinstance(value, FromEnvironment) else value
        if value not in values:
            raise OptionError(f"expected one of {', '.join(map(str, values))}, got {shown(value)}"
                              + did_you_mean(str(value), values))
        return value
    return Kind(" | ".join(values), check)


def list_of(item: Kind, min_length=0):
    def check(value, context):
        if isinstance(value, (str, int, float)) and min_length <= 1:
            value = [value]  # a single value where a list is expected is a list of one
        if not isinstance(value, list):
            raise OptionError(f"expected a list of {item.describe}, got {_type_name(value)} {shown(value)}")
        if len(value) < min_length:
            raise OptionError(f"expected at least {min_length} value(s), got {len(value)}")
        converted = []
        for index, element in enumerate(value):
            try:
                converted.append(item(element, context))
            except OptionError as error:
                raise OptionError(f"[{index}]: {error}") from None
        return converted
    return Kind(f"list of {item.describe}", check)


def path():
    """A file path; relative paths resolve against the config file's folder."""
    def check(value, context):
        if not isinstance(value, str) or not value:
            raise OptionError(f"expected a path, got {_type_name(value)} {shown(value)}")
        return os.path.normpath(context.base_dir / Path(value).expanduser())
    return Kind("path", check, is_path=True)


def template_fields(value):
    """The placeholder names of a path template such as `out/{name}.laz`.

    >>> sorted(template_fields("out/{id}/{name}.laz"))
    ['id', 'name']
    """
    fields = set()
    try:
        for _, field, spec, conversion in string.Formatter().parse(value):
            if field is None:
                continue
            if not field.isidentifier() or spec or conversion:
                raise OptionError(f"bad template field in {value!r}: use plain fields such as {{name}}")
            fields.add(field)
    except ValueError as error:
        raise OptionError(f"bad template {value!r}: {error}") from None
    return fields


def template():
    """A path template; the config checks its fields against those the source provides."""
    def check(value, context):
        if not isinstance(value, str) or not value:
            raise OptionError(f"expected a path template, got {_type_name(value)} {shown(value)}")
        template_fields(value)
        if Path(value).expanduser().is_absolute():
            return os.path.normpath(Path(value).expanduser())
        folder = str(context.base_dir).replace("{", "{{").replace("}", "}}")
        return os.path.normpath(Path(folder) / value)
    return Kind("path template", check, is_template=True)


def anything(describe="any value"):
    return Kind(describe, lambda value, context: typed(value))


def did_you_mean(word, candidates):
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def xyz_numbers(positive=False, keywords=()):
    """Three finite numbers (one for each of x, y, z), a single number for all three, or a keyword."""
    def check(value, context):
        if isinstance(value, str) and value in keywords:
            return str(value)
        value = typed(value)
        values = value if isinstance(value, list) else [value]
        if len(values) not in (1, 3) or not all(is_number(v) and math.isfinite(v) for v in values):
            raise OptionError(f"expected {'a positive' if positive else 'a'} number or 3 numbers"
                              f"{' or ' + ' | '.join(keywords) if keywords else ''}, got {shown(value)}")
        if positive and min(values) <= 0:
            raise OptionError(f"expected positive numbers, got {shown(value)}")
        return [float(v) for v in values] * (3 if len(values) == 1 else 1)
    words = f" | {' | '.join(keywords)}" if keywords else ""
    return Kind(f"{'positive ' if positive else ''}number or [x, y, z]{words}", check)


def one_of_values(*values):
    """One of a few values that YAML may give as numbers or strings (`version: 1.4` or "1.4"); kept as text."""
    def check(value, context):
        if str(value) not in values or isinstance(typed(value), bool):
            raise OptionError(f"expected one of {', '.join(values)}, got {shown(value)}")
        return str(value)
    return Kind(" | ".join(values), check)
