"""`pipeline run | validate | stages`: a thin shell over the library. main(argv) -> exit code."""
import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback

from . import __version__
from .errors import ConfigError, PipelineError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
# a signal that stops a run: the exit code a shell gives for it (128 + the number), and what is said
STOPPING = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
COMMAND_GROUP = "cupix_pipeline.commands"


def build_parser():
    parser = argparse.ArgumentParser(prog="pipeline", description="Align Cupix point clouds and write open formats.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run a pipeline config")
    run.add_argument("config", help="the YAML config file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="TAG.OPTION=VALUE",
                     help="override an option of the stage with that tag (VALUE is read as YAML)")
    run.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="items processed in parallel (0: one per core; default 1, or with --executor dask and no "
                          "scheduler, the workers of the local cluster: one per core)")
    run.add_argument("--executor", choices=("local", "dask"), default="local",
                     help="where items run: this machine (default), or a Dask cluster")
    run.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: "
                     "$DASK_SCHEDULER_ADDRESS, else a local cluster)")
    run.add_argument("--retries", type=int, default=1, metavar="N",
                     help="with --executor dask: times a task lost with its worker is run again (default 1)")
    run.add_argument("--report", metavar="FILE", help="write the JSON run report to FILE ('-' for stdout)")
    run.add_argument("--dry-run", action="store_true", help="list the items and the files they would give, then stop")
    run.add_argument("--refresh", action="store_true", help="ignore the source's download cache")
    noise = run.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="no progress, only warnings and errors")
    noise.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.add_argument("--debug", action="store_true", help="show tracebacks")

    validate = commands.add_parser("validate", help="check a config without reading any data")
    validate.add_argument("config")
    validate.add_argument("--json", action="store_true", help='print {"valid", "errors", "stages"}')
    validate.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    inspect = commands.add_parser("inspect", help="show where a config would place its items, before any point is "
                                  "read (Cupix subs: source.files with a metadata listing, or source.cupix)")
    inspect.add_argument("config")
    inspect.add_argument("--plot", metavar="FILE.png", help="also draw every item where it would be placed")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--set", dest="overrides", action="append", default=[], metavar="TAG.OPTION=VALUE",
                         help="override an option of the stage with that tag (VALUE is read as YAML)")
    inspect.add_argument("--debug", action="store_true", help="show tracebacks")

    stages = commands.add_parser("stages", help="list the available stages and their options")
    stages.add_argument("--json", action="store_true")
    stages.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    for name in plugin_commands():
        commands.add_parser(name, help=f"{name} commands from an installed plugin (pipeline {name} --help)",
                            add_help=False)
    return parser


def plugin_commands():
    """Commands that installed packages add through the `cupix_pipeline.commands` entry points."""
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group=COMMAND_GROUP)}


def run_plugin(args):
    entry = plugin_commands()[args.command]
    try:
        command = entry.load()
    except ImportError as error:
        raise PipelineError(f"the {args.command!r} command cannot be loaded: {error}") from error
    return command([a for a in args.arguments if a != "--debug"])


class StopSignals:
    """SIGINT and SIGTERM stop a command: the first one raises KeyboardInterrupt in the main thread. Later
    ones are ignored, so that they cannot break off the cleanup of the first, and so is any that comes once
    `hold()` was called: the outputs are then being put in place, and the run has succeeded."""

    def __init__(self):
        self.received = None
        self.held = False

    def on_signal(self, signum, frame):
        if self.received is None and not self.held:
            self.received = signum
            raise KeyboardInterrupt

    def hold(self):
        self.held = True

    def install(self):
        """Takes over the signals; returns the handlers they had."""
        return {signum: signal.signal(signum, self.on_signal) for signum in STOPPING}


def main(argv=None) -> int:
    """Runs one command; the exit code. Called without `argv`, this process is the `pipeline` program:
    SIGINT and SIGTERM are then ignored from the end of the command until it exits, as a late Ctrl-C must
    not change what it did; called with `argv` (in-process), the handlers are given back."""
    stopping = StopSignals()
    previous = stopping.install()
    program, args = argv is None, None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in plugin_commands():  # a plugin parses its own arguments, --help included
            args = argparse.Namespace(command=argv[0], arguments=argv[1:], debug="--debug" in argv)
        else:
            args = build_parser().parse_args(argv)
        configure_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
        args.on_commit = stopping.hold
        return COMMANDS.get(args.command, run_plugin)(args)
    except SystemExit as exit:  # from argparse: --help, --version, a usage error
        return int(exit.code or 0)
    except BaseException as error:
        stopping.hold()
        # Ctrl-C may surface as another exception, e.g. raised inside a compressor's write callback
        if stopping.received or isinstance(error, KeyboardInterrupt):
            code, what = STOPPING[stopping.received or signal.SIGINT]
            say(f"{what}: no output was kept")
            return code
        return report_error(error, getattr(args, "debug", False))
    finally:
        stopping.hold()
        for signum, handler in previous.items():
            # the program ignores them from here: Python's exit would reset them to the default, which
            # kills a process that is only tidying up (exit -2 instead of its code)
            signal.signal(signum, signal.SIG_IGN if program else handler)


def program():
    """The `pipeline` command: `main()` for this process, then its exit. After Ctrl-C or SIGTERM the process
    ends at once, its outputs already removed: Python's own exit sometimes turned an early Ctrl-C, caught
    and reported, into death by SIGINT (exit -2) after all, most likely because it came while a library ran
    code through the C API during an import, which sets the interpreter's "unhandled interrupt" flag."""
    code = main()
    if code in {stopped for stopped, _ in STOPPING.values()}:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def say(line):
    """One line on stderr, in one write, so that a log line from another thread cannot land inside it."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report_error(error, debug):
    """Prints one line for an error (tracebacks only with --debug) and returns the exit code."""
    if isinstance(error, UsageError):
        say(f"pipeline: error: {error}")
        return EXIT_USAGE
    if isinstance(error, ConfigError):
        for problem in error.problems:
            say(f"error: {problem}")
        return EXIT_ERROR
    if not isinstance(error, Exception):
        raise error
    if debug:
        traceback.print_exception(error)
    first_line = (str(error).strip().splitlines() or [""])[0]  # a library's message may run over lines
    if isinstance(error, PipelineError):
        say(f"error: {first_line}")
        return EXIT_ERROR
    # a bug: still one line unless --debug
    say(f"error: internal error (a bug): {type(error).__name__}: {first_line}"
        f"{'' if debug else '; rerun with --debug for the traceback'}")
    return EXIT_BUG


def configure_logging(quiet, verbose):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.addLevelName(logging.ERROR, "error")
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.INFO, "info")
    logging.addLevelName(logging.DEBUG, "debug")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # its debug lines show signed storage URLs
    logging.getLogger("laspy").setLevel(logging.CRITICAL)  # its errors reach the user as our one-line errors
    logging.getLogger("distributed").setLevel(logging.WARNING)  # a cluster starting and stopping is no news


def load_registry():
    from .registry import Registry

    return Registry.from_entry_points()


def command_run(args):
    from . import config as config_module
    from . import report
    from .progress import ConsoleProgress, Progress
    from .executors import cpu_count
    from .runner import Runner

    registry = load_registry()
    config = config_module.load(args.config, registry, overrides=args.overrides,
                                source_options={"refresh": True} if args.refresh else None)
    if args.jobs is not None and args.jobs < 0:
        raise UsageError(f"--jobs {args.jobs}: expected 0 (one per core) or more")
    if args.retries < 0:
        raise UsageError(f"--retries {args.retries}: expected 0 or more")
    if args.executor != "dask" and args.scheduler:
        raise UsageError("--scheduler is for --executor dask")
    jobs = args.jobs or (1 if args.jobs is None and args.executor == "local" else cpu_count())
    executor = None
    if args.executor == "dask":
        from .executors import DaskExecutor
        executor = DaskExecutor(args.scheduler, workers=jobs, retries=args.retries)
    progress = Progress() if args.quiet or args.dry_run else ConsoleProgress(sys.stderr, sys.stderr.isatty())
    runner = Runner(config, registry, jobs=jobs, progress=progress, checksums=bool(args.report), executor=executor)
    started_at, started = report.now(), time.perf_counter()
    plan = runner.plan(report=args.report if args.report not in (None, "-") else None)
    if args.dry_run:
        print_plan(plan)
        return EXIT_OK
    built = []

    def run_report(results):  # the runner asks for it before committing, when it goes to a file
        built.append(report.build(config, results, started_at, time.perf_counter() - started, jobs))
        return report.dumps(built[0])

    results = runner.run(plan, report=run_report, on_commit=args.on_commit)
    if not built:
        run_report(results)
    if args.report == "-":
        sys.stdout.write(report.dumps(built[0]))
    if not args.quiet:
        print(report.summary(built[0]), file=sys.stderr)
    return EXIT_OK


def print_plan(plan):
    print(f"{len(plan.items)} item(s)")
    for item in plan.items:
        count = f", {item.point_count:,} points" if item.point_count is not None else ""
        print(f"[{item.index}] {item.name} (id {item.id}{count}) from {item.location}")
        for sink_label, path in plan.targets[item.index]:
            print(f"    -> {path}  ({sink_label})")
    for sink_label, path in plan.merged:
        print(f"all items -> {path}  ({sink_label}, merged)")
    for sink_label, path in plan.gathered:
        print(f"all items -> {path}  ({sink_label}, at the end)")
    if plan.report is not None:
        print(f"run report -> {plan.report}")


def command_validate(args):
    from . import config as config_module

    registry = load_registry()
    try:
        config = config_module.load(args.config, registry, check_inputs=True)
    except ConfigError as error:
        if not args.json:
            raise
        print(json.dumps({"valid": False, "errors": error.problems, "stages": []}, indent=2))
        return EXIT_ERROR
    stages = [{"index": s.index, "type": s.type, "tag": s.tag, "line": s.line, "options": s.public_options()}
              for s in config.stages]
    if args.json:
        print(json.dumps({"valid": True, "errors": [], "stages": stages}, indent=2, default=str))
    else:
        print(f"{args.config}: valid: " + " -> ".join(s.type + (f" ({s.tag})" if s.tag else "") for s in config.stages))
    return EXIT_OK


def command_inspect(args):
    """Loads the config and hands it to the command plugin that inspects configs: the first whose module has an
    `inspect_config(config, registry, plot, as_json) -> exit code` (the engine names no stage or plugin)."""
    import importlib

    from . import config as config_module

    registry = load_registry()
    config = config_module.load(args.config, registry, overrides=args.overrides)
    for name, entry in sorted(plugin_commands().items()):
        try:
            inspect = getattr(importlib.import_module(entry.module), "inspect_config", None)
        except ImportError as error:
            raise PipelineError(f"the {name!r} command cannot be loaded: {error}") from error
        if inspect is not None:
            return inspect(config, registry, plot=args.plot, as_json=args.json)
    raise PipelineError("no installed command plugin can inspect a config")


def describe_stages(registry):
    described = []
    for name in registry.names():
        cls = registry.get(name)
        options = [{"name": o.name, "type": o.kind.describe, "required": o.required,
                    "default": None if o.required else o.default, "doc": o.doc} for o in cls.options]
        declares = {flag: getattr(cls, flag) for flag in ("moves_points", "drops_points", "whole_cloud")
                    if getattr(cls, flag, False)}
        described.append({"type": name, "doc": cls.summary(), "declares": declares, "options": options})
    return described


def command_stages(args):
    import shutil
    import textwrap

    described = describe_stages(load_registry())
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return EXIT_OK
    width = max(40, shutil.get_terminal_size((100, 24)).columns - 1)  # $COLUMNS, the terminal, else 100
    for stage in described:
        declares = f" ({', '.join(flag.replace('_', ' ') for flag in stage['declares'])})" if stage["declares"] else ""
        print(textwrap.fill(f"{stage['type']}: {stage['doc']}{declares}", width, subsequent_indent="    "))
        for option in stage["options"]:
            default = "required" if option["required"] else f"default {json.dumps(option['default'], default=str)}"
            print(textwrap.fill(f"{option['name']} ({option['type']}; {default}): {option['doc']}", width,
                                initial_indent="    ", subsequent_indent="        ", break_on_hyphens=False))
    return EXIT_OK


COMMANDS = {"run": command_run, "validate": command_validate, "stages": command_stages, "inspect": command_inspect}
