"""Stage type name -> stage class, filled from Python entry points and imported only when used."""
import importlib
from importlib.metadata import entry_points

from .errors import MissingDependency, PipelineError
from .options import did_you_mean

ENTRY_POINT_GROUP = "cupix_pipeline.stages"
KINDS = ("source", "transform", "sink")


class Registry:
    """Maps `<kind>.<name>` to a class or to a `module:Class` path that is imported on first use."""

    def __init__(self, entries=None):
        self._targets = {}
        self._loaded = {}
        for name, target in (entries or {}).items():
            self.add(name, target)

    @classmethod
    def from_entry_points(cls, group=ENTRY_POINT_GROUP):
        registry = cls()
        owners = {}
        for entry in entry_points(group=group):
            owner = entry.dist.name if entry.dist else "?"
            if entry.name in owners and owners[entry.name][1] != entry.value:
                raise PipelineError(f"stage {entry.name!r} is registered twice: by {owners[entry.name][0]} "
                                    f"({owners[entry.name][1]}) and by {owner} ({entry.value})")
            owners[entry.name] = (owner, entry.value)
        for name, (_, value) in sorted(owners.items()):
            registry.add(name, value)
        return registry

    def add(self, name, target):
        kind, _, short = name.partition(".")
        if kind not in KINDS or not short:
            raise PipelineError(f"bad stage name {name!r}: expected <kind>.<name> with kind one of {', '.join(KINDS)}")
        if name in self._targets and self._targets[name] != target:
            raise PipelineError(f"stage {name!r} is already registered as {self._targets[name]}")
        self._targets[name] = target

    def names(self):
        return sorted(self._targets)

    def __contains__(self, name):
        return name in self._targets

    def unknown_message(self, name):
        return f"unknown stage type {name!r}{did_you_mean(name, self.names())} (known: {', '.join(self.names())})"

    def get(self, name):
        """The stage class for a name; a failed import becomes a one-line error with what to install."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            raise PipelineError(self.unknown_message(name))
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attribute = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except (ImportError, OSError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                missing = getattr(error, "name", None) or module_name
                raise MissingDependency(f"stage {name!r} cannot be loaded: {reason}; "
                                        f"install the package that provides {missing!r}") from error
            try:
                target = getattr(module, attribute)
            except AttributeError as error:
                raise PipelineError(f"stage {name!r} cannot be loaded: {module_name} has no {attribute!r}") from error
        expected_kind = name.partition(".")[0]
        if getattr(target, "kind", None) != expected_kind:
            raise PipelineError(f"stage {name!r} ({target!r}) is not a {expected_kind} stage")
        self._loaded[name] = target
        return target

    def entries(self):
        """Name -> target, for rebuilding the registry in a worker process."""
        return {name: self._targets[name] for name in self.names()}
