"""YAML config -> validated, typed stage specs. The only module that imports yaml.

Every problem names the file, the line, the stage and the option, as a breadcrumb:
`demo.yaml:14: stages[1] (transform.matrix) > matrix: expected 16 numbers, got 15`.
"""
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional

import yaml

from .errors import ConfigError, OptionError, PipelineError, UsageError
from .options import FromEnvironment, OptionContext, did_you_mean, shown, template_fields

VERSION = 1
TOP_LEVEL_KEYS = ("version", "stages")
ORDER = {"source": 0, "transform": 1, "sink": 2}
ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# `${VAR}` in YAML's flow style (`[1, ${DX}]`) reads as `$` and a mapping: before parsing, each reference is
# replaced by a marker that is plain text in any style (private-use characters), and put back after
PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def protected(text):
    """The YAML text with each `${...}` replaced by a marker, and the references in order."""
    references = []

    def mark(match):
        if match.group(0) == "$$":
            return "$$"
        references.append(match.group(0))
        return f"\ue000{len(references) - 1}\ue001"

    return ENV_REFERENCE.sub(mark, text), references
TAG_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# A config is small: a YAML alias bomb (each level repeating an anchor) expands past these in microseconds
MAX_VALUES = 100_000  # values in the document once its aliases are expanded
MAX_DEPTH = 50  # lists and mappings nested in one another


@dataclass(frozen=True)
class StageSpec:
    """One validated stage of a config: its type, tag and converted option values."""

    index: int
    type: str
    tag: Optional[str]
    options: Mapping[str, Any]
    line: Optional[int] = None
    secrets: frozenset = frozenset()

    @property
    def kind(self):
        return self.type.partition(".")[0]

    @property
    def label(self):
        tag = f", tag {self.tag}" if self.tag else ""
        return f"stages[{self.index}] ({self.type}{tag})"

    def public_options(self):
        """The options with secret values replaced, for reports and listings."""
        return {name: ("***" if name in self.secrets else value) for name, value in self.options.items()}

    def __reduce__(self):
        return (StageSpec, (self.index, self.type, self.tag, dict(self.options), self.line, self.secrets))

    def __repr__(self):
        return f"StageSpec({self.label}, options={self.public_options()!r})"


@dataclass(frozen=True)
class Config:
    path: Path
    sha256: str
    stages: tuple = field(default_factory=tuple)

    @property
    def source(self):
        return self.stages[0]

    @property
    def transforms(self):
        return tuple(s for s in self.stages if s.kind == "transform")

    @property
    def sinks(self):
        return tuple(s for s in self.stages if s.kind == "sink")


@dataclass(frozen=True)
class Override:
    """`--set TAG.OPTION=VALUE`; the value is read as YAML, so numbers and lists keep their type."""

    tag: str
    option: str
    value: Any
    text: str

    @staticmethod
    def parse(text):
        target, equals, raw = text.partition("=")
        tag, dot, option = target.partition(".")
        if not equals or not dot or not tag or not option:
            raise UsageError(f"--set {target}: expected TAG.OPTION=VALUE")
        try:
            value = parse_value(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except Refused as refused:
            raise UsageError(f"--set {target}: {refused}") from None
        return Override(tag, option, value, text)


class Refused(Exception):
    """YAML that is refused whole (too many values once expanded, nested too deep, recursive, tagged)."""

    def __init__(self, message, line=None):
        super().__init__(message)
        self.line = line


def composed(text):
    """The YAML node graph of `text`, refusing explicit tags (`!!python/...`, `!!binary`, ...): a config
    needs none, and they only widen what a file can make the loader do."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, yaml.TagToken):
            raise Refused(f"YAML tags are not accepted ({token.value[0]}{token.value[1]})",
                          token.start_mark.line + 1)
        if isinstance(token, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockMappingStartToken,
                              yaml.BlockSequenceStartToken)):
            depth += 1
            if depth > MAX_DEPTH:  # refused before the composer recurses (and the scanner slows) on it
                raise Refused(f"lists or mappings nested more than {MAX_DEPTH} deep", token.start_mark.line + 1)
        elif isinstance(token, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)):
            depth -= 1
    return yaml.compose(text, Loader=yaml.SafeLoader)


def parse_value(text):
    """A value written as YAML (e.g. on the command line), under the same limits as a config file."""
    text, references = protected(text)
    located = _Located("--set", {}, references)
    node = composed(text)
    value = located.build(node) if node is not None else None
    if located.problems:
        raise yaml.YAMLError(located.problems[0])
    return value


class _Located:
    """A python value built from YAML, with the line of every key and element kept beside it."""

    def __init__(self, display, environ, references=()):
        self.display = display
        self.environ = environ
        self.references = references  # the `${...}` that `protected` took out of the text
        self.lines = {}
        self.problems = []
        self._constructor = yaml.SafeLoader("")
        self._values = 0
        self._open = []  # the collections being built, outermost first

    def build(self, node, where=()):
        self._values += 1
        if self._values > MAX_VALUES:
            raise Refused(f"more than {MAX_VALUES:,} values once its aliases are expanded", node.start_mark.line + 1)
        self.lines[where] = node.start_mark.line + 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if any(node is other for other in self._open):
                raise Refused("an alias refers to a list or mapping that holds it (recursive YAML)",
                              node.start_mark.line + 1)
            if len(self._open) >= MAX_DEPTH:
                raise Refused(f"lists or mappings nested more than {MAX_DEPTH} deep", node.start_mark.line + 1)
            self._open.append(node)
            try:
                return self._mapping(node, where) if isinstance(node, yaml.MappingNode) else \
                    [self.build(child, where + (i,)) for i, child in enumerate(node.value)]
            finally:
                self._open.pop()
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as error:
            self._problem(node, where, f"invalid YAML: {getattr(error, 'problem', None) or error}")
            return None
        except ValueError:  # Python refuses integers of thousands of digits
            self._problem(node, where, f"a number of {len(node.value):,} digits is not accepted")
            return None
        if isinstance(value, str) and "\ue000" in value:
            value = PLACEHOLDER.sub(lambda match: self.references[int(match.group(1))], value)
        if isinstance(value, str) and "$" in value:
            value = self._expand(node, value, where)
        return value

    def _mapping(self, node, where):
        written = {id(key) for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"}
        try:
            self._constructor.flatten_mapping(node)  # `<<: *anchor` merge keys, which written keys override
        except yaml.YAMLError as error:
            self._problem(node, where, f"invalid YAML: {getattr(error, 'problem', None) or error}")
            return None
        result, written_on = {}, {}
        for key_node, value_node in node.value:
            key = self.build(key_node, where + ("<key>",))
            if not isinstance(key, (str, int, float, bool)) or key is None:
                self._problem(key_node, where, f"a key must be a plain name, got {shown(key)}")
                continue
            line = key_node.start_mark.line + 1
            if id(key_node) in written:
                if key in written_on:
                    self._problem(key_node, where + (key,), f"duplicate key {key!r} (also on line {written_on[key]})")
                written_on[key] = line
            result[key] = self.build(value_node, where + (key,))
            self.lines[where + (key,)] = line
        return result

    def _expand(self, node, value, where):
        def substitute(match):
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self._problem(node, where, f"environment variable {name} is not set")
            return ""

        expanded = ENV_REFERENCE.sub(substitute, value)
        if node.style is None:  # a plain scalar: `capture_id: ${ID}` gives a number, as if written inline
            try:
                typed = parse_value(expanded)
            except (yaml.YAMLError, Refused):
                return expanded
            if isinstance(typed, (int, float, bool)):
                return FromEnvironment(expanded, typed)
        return expanded

    def _problem(self, node, where, message):
        crumbs = breadcrumb(where)
        self.problems.append(f"{self.display}:{node.start_mark.line + 1}: {crumbs + ': ' if crumbs else ''}{message}")


def breadcrumb(where):
    text = ""
    for part in where:
        if part == "<key>":
            continue
        text += f"[{part}]" if isinstance(part, int) else (f" > {part}" if text else str(part))
    return text


def load(path, registry, overrides=(), environ=None, display=None, source_options=None, check_inputs=False) -> Config:
    """Reads and validates a config file; raises ConfigError listing every problem found. `check_inputs` also
    reports the input files and globs that match nothing (without reading any point)."""
    path = Path(path)
    display = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError([f"{display}: cannot read config: {error.strerror or error}"]) from error
    try:
        text, references = protected(raw.decode("utf-8"))
        located = _Located(display, os.environ if environ is None else environ, references)
        node = composed(text)
        document = located.build(node) if node is not None else None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{display}: not a UTF-8 text file ({error.reason})"]) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError([f"{display}{line}: invalid YAML: {problem}"]) from error
    except Refused as refused:
        line = f":{refused.line}" if refused.line else ""
        raise ConfigError([f"{display}{line}: refused: {refused}"]) from None
    if located.problems:  # YAML and environment problems first: option checks would only echo them
        raise ConfigError(located.problems)
    validator = _Validator(display, path.resolve().parent, registry, located.lines, located.problems, check_inputs)
    stages = validator.validate(document, [Override.parse(o) if isinstance(o, str) else o for o in overrides],
                                source_options or {})
    if validator.problems:
        raise ConfigError(validator.problems)
    return Config(path=path, sha256=hashlib.sha256(raw).hexdigest(), stages=tuple(stages))


class _Validator:
    def __init__(self, display, base_dir, registry, lines, problems, check_inputs=False):
        self.display = display
        self.check_inputs = check_inputs
        self.context = OptionContext(base_dir=base_dir)
        self.registry = registry
        self.lines = lines
        self.problems = problems

    def problem(self, where, message, crumbs=None, line_of=None):
        line = self.lines.get(line_of if line_of is not None else where)
        location = f"{self.display}:{line}" if line else self.display
        crumbs = breadcrumb(where) if crumbs is None else crumbs
        self.problems.append(f"{location}: {crumbs + ': ' if crumbs else ''}{message}")

    def validate(self, document, overrides, source_options):
        if not isinstance(document, dict):
            self.problem((), "expected a mapping with 'version' and 'stages'")
            return []
        for key in document:
            if key not in TOP_LEVEL_KEYS:
                self.problem((key,), f"unknown top-level key {key!r}{did_you_mean(str(key), TOP_LEVEL_KEYS)}",
                             crumbs="")
        if "version" not in document:
            self.problem((), f"missing 'version: {VERSION}'")
        elif isinstance(document["version"], bool) or document["version"] != VERSION:
            self.problem(("version",), f"unsupported version {shown(document['version'])}; this tool reads version {VERSION}",
                         crumbs="")
        raw_stages = document.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            self.problem(("stages",) if "stages" in document else (), "expected a non-empty list of stages", crumbs="")
            return []
        self._apply_overrides(raw_stages, overrides)
        self._apply_source_options(raw_stages, source_options)
        stages = [spec for index, raw in enumerate(raw_stages)
                  if (spec := self._stage(index, raw)) is not None]
        if len(stages) == len(raw_stages):
            self._check_order(stages)
            self._check_templates(stages)
        return stages

    def _apply_overrides(self, raw_stages, overrides):
        tags = {raw.get("tag"): raw for raw in raw_stages if isinstance(raw, dict) and raw.get("tag")}
        for override in overrides:
            if override.tag not in tags:
                known = ", ".join(sorted(map(str, tags))) or "none: add `tag:` to a stage"
                raise UsageError(f"--set {override.tag}.{override.option}: no stage has tag {override.tag!r} (tags: {known})")
            if override.option in ("type", "tag"):
                raise UsageError(f"--set {override.tag}.{override.option}: the stage's {override.option} cannot be set")
            tags[override.tag][override.option] = override.value
            tags[override.tag].setdefault("<set>", set()).add(override.option)

    def _apply_source_options(self, raw_stages, source_options):
        """Options the command line gives the source (`--refresh`), refused by a source without them."""
        first = raw_stages[0]
        if not source_options or not isinstance(first, dict) or first.get("type") not in self.registry:
            return
        declared = {o.name for o in self.registry.get(first["type"]).options}
        for name, value in source_options.items():
            if name not in declared:
                raise UsageError(f"--{name}: {first['type']} has no {name} option")
            first[name] = value
            first.setdefault("<set>", set()).add(name)

    def _stage(self, index, raw):
        where = ("stages", index)
        if not isinstance(raw, dict):
            self.problem(where, f"expected a mapping with 'type' and options, got {shown(raw)}")
            return None
        from_set = raw.pop("<set>", set())
        stage_type = raw.get("type")
        if not isinstance(stage_type, str):
            self.problem(where, "missing 'type' (for example type: source.files)" if stage_type is None
                         else f"type: expected a stage name, got {shown(stage_type)}")
            return None
        tag = raw.get("tag")
        label = f"stages[{index}] ({stage_type}{f', tag {tag}' if isinstance(tag, str) else ''})"
        if stage_type not in self.registry:
            self.problem(where + ("type",), self.registry.unknown_message(stage_type), crumbs=label)
            return None
        try:
            cls = self.registry.get(stage_type)
        except PipelineError as error:
            self.problem(where + ("type",), str(error), crumbs=label)
            return None
        if tag is not None and (not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag)):
            self.problem(where + ("tag",), f"expected a tag of letters, digits, '_' or '-', got {shown(tag)}",
                         crumbs=f"stages[{index}] ({stage_type})")
            return None
        declared = {option.name: option for option in cls.options}
        converted = {}
        before = len(self.problems)
        for name, value in raw.items():
            if name in ("type", "tag"):
                continue
            crumbs = f"{label} > {name}{' (from --set)' if name in from_set else ''}"
            option = declared.get(name)
            if option is None:
                known = ", ".join(declared) or "none"
                self.problem(where + (name,), f"unknown option{did_you_mean(str(name), declared)} (options: {known})",
                             crumbs=crumbs)
                continue
            try:
                converted[name] = option.kind(value, self.context)
            except OptionError as error:
                message = "invalid value (not shown: it is a secret)" if option.secret else str(error)
                self.problem(where + (name,), message, crumbs=crumbs)
        for option in cls.options:
            if option.name not in raw:
                if option.required:
                    self.problem(where, f"missing required option {option.name!r} ({option.doc})", crumbs=label,
                                 line_of=where)
                elif option.kind.is_path and isinstance(option.default, str):
                    converted[option.name] = option.kind(option.default, self.context)
                else:
                    converted[option.name] = option.default
        if len(self.problems) == before:
            try:
                cls.check(converted)
                found = cls.missing_inputs(converted) if self.check_inputs else []
            except OptionError as error:
                found = [error]
            for error in found:
                name, index = error.option, error.index
                place = ((name,) + ((index,) if index is not None else ())) if name in raw else ()
                self.problem(where + place, str(error), crumbs=label + "".join(
                    [f" > {name}" if name else "", f"[{index}]" if index is not None and name else ""]))
        if len(self.problems) > before:
            return None
        secrets = frozenset(o.name for o in cls.options if o.secret)
        return StageSpec(index, stage_type, tag, MappingProxyType(converted), self.lines.get(where), secrets)

    def _check_order(self, stages):
        tags = {}
        for spec in stages:
            if spec.tag:
                if spec.tag in tags:
                    self.problem(("stages", spec.index, "tag"), f"tag {spec.tag!r} is already used by stages[{tags[spec.tag]}]",
                                 crumbs=spec.label)
                tags.setdefault(spec.tag, spec.index)
        kinds = [spec.kind for spec in stages]
        if kinds[0] != "source":
            self.problem(("stages", 0), f"the first stage must be a source, got {stages[0].type}", crumbs=stages[0].label)
        for spec in stages[1:]:
            if spec.kind == "source":
                self.problem(("stages", spec.index), "only one source is allowed, and it comes first", crumbs=spec.label)
        for previous, spec in zip(stages, stages[1:]):
            if ORDER[spec.kind] < ORDER[previous.kind] and spec.kind != "source":
                self.problem(("stages", spec.index), f"a {spec.kind} cannot follow a {previous.kind}: "
                             "the order is source, transforms, sinks", crumbs=spec.label)
        if "sink" not in kinds:
            self.problem(("stages",), "no sink: add at least one (for example type: sink.las)", crumbs="")

    def _check_templates(self, stages):
        if stages[0].kind != "source":
            return
        known = set(self.registry.get(stages[0].type).template_fields_for(stages[0].options))
        for spec in stages:
            cls = self.registry.get(spec.type)
            for option in cls.options:
                value = spec.options.get(option.name)
                if not option.kind.is_template or not isinstance(value, str):
                    continue
                for unknown in sorted(template_fields(value) - known):
                    self.problem(("stages", spec.index, option.name),
                                 f"unknown template field {{{unknown}}}{did_you_mean(unknown, sorted(known))} "
                                 f"(fields of {stages[0].type}: {' '.join('{' + f + '}' for f in sorted(known))})",
                                 crumbs=f"{spec.label} > {option.name}")
