"""Write docs/reference.md: every server flag, metric and error kind, read from the code.

    .venv-train/bin/python docs/generate_reference.py          # rewrite docs/reference.md
    .venv-train/bin/python docs/generate_reference.py --check  # exit 1 when it is stale

(`make docs` runs the first.) Where each table comes from:

- flags: the fields of `ServerConfig` (server/mnist_serving_server/config.py), whose
  descriptions are also `mnist-serving --help`'s;
- metrics: every prometheus_client `Counter`, `Gauge`, `Histogram`, `Summary`, `Info` or
  `Enum` constructed anywhere under server/, read from the source (name, type, labels and
  help text as declared), so a metric declared in a new module is picked up too. A
  declaration this script cannot read (a name or labels computed at run time) is an error
  naming its file and line: write it with literals (or module-level string constants);
- errors: every subclass of `ServingError` (server/mnist_serving_server/core/errors.py and
  wherever else one is defined under server/), with the gRPC and HTTP status it carries.

tests/unit/docs/test_docs_reference.py fails when the committed file differs from what this
writes, or when a flag of `mnist-serving --help`, a metric of a live registry or an error
kind is missing from it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import sys
import types
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
SERVER_DIR = ROOT / "server"
PACKAGE_DIR = SERVER_DIR / "mnist_serving_server"
REFERENCE = ROOT / "docs" / "reference.md"

METRIC_TYPES = ("Counter", "Gauge", "Histogram", "Summary", "Info", "Enum")


class DeclarationError(Exception):
    """A metric declaration whose name, help or labels cannot be read from the source."""


# --- flags ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flag:
    flag: str
    env: str
    default: str
    values: str
    meaning: str


def _values(annotation: Any) -> str:
    """What a flag takes, when it is a choice: "`a`, `b`" (and "a number" for int | "auto")."""
    union = get_origin(annotation) in (Union, types.UnionType)
    options = get_args(annotation) if union else (annotation,)
    choices: list[str] = []
    for option in options:
        if get_origin(option) is Literal:
            choices.extend(f"`{choice}`" for choice in get_args(option))
        elif isinstance(option, type) and issubclass(option, Enum):
            choices.extend(f"`{member.value}`" for member in option)
    if choices and int in options:
        choices.append("a number")
    return ", ".join(choices)


def _shown_default(default: object) -> str:
    from mnist_serving_server.config import NO_SERVICES

    if default is None:
        return "unset"
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default) or NO_SERVICES
    if isinstance(default, Enum):
        return str(default.value)
    return str(default)


def flags() -> list[Flag]:
    """One row per `ServerConfig` field, in declaration order (as `--help` lists them)."""
    from mnist_serving_server.config import ServerConfig, env_name, flag_name

    return [
        Flag(
            flag=flag_name(name),
            env=env_name(name),
            default=_shown_default(field.default),
            values=_values(field.annotation),
            meaning=" ".join((field.description or "").split()),
        )
        for name, field in ServerConfig.model_fields.items()
    ]


# --- metrics -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str  # as /metrics shows it (a counter's `_total` included)
    kind: str  # counter, gauge, histogram, ...
    labels: tuple[str, ...]
    meaning: str
    declared_in: str  # path relative to the repository root


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "text"` constants (what f-string names refer to)."""
    found: dict[str, str] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = value.value
    return found


def _text(node: ast.expr, strings: dict[str, str]) -> str | None:
    """The value of a string expression made of literals and module-level constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return strings.get(node.id)
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if value.format_spec is not None or value.conversion != -1:
                    return None
                part = _text(value.value, strings)
            else:
                part = _text(value, strings)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, strings), _text(node.right, strings)
        return None if left is None or right is None else left + right
    return None


def _labels(node: ast.expr, scope: list[ast.stmt]) -> tuple[str, ...] | None:
    """A list or tuple of string literals, or a name assigned one in the enclosing body."""
    if isinstance(node, ast.List | ast.Tuple):
        labels = [elt.value for elt in node.elts if isinstance(elt, ast.Constant)]
        if len(labels) != len(node.elts) or not all(isinstance(x, str) for x in labels):
            return None
        return tuple(str(label) for label in labels)
    if isinstance(node, ast.Name):
        for statement in scope:
            for child in ast.walk(statement):
                if (
                    isinstance(child, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == node.id for t in child.targets)
                    and isinstance(child.value, ast.List | ast.Tuple)
                ):
                    return _labels(child.value, [])
    return None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for item in call.keywords:
        if item.arg == keyword:
            return item.value
    return call.args[position] if len(call.args) > position else None


def _metric_constructors(tree: ast.Module) -> dict[str, str]:
    """Local names bound to prometheus_client's metric classes: {"Counter": "Counter", ...}."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            for alias in node.names:
                if alias.name in METRIC_TYPES:
                    names[alias.asname or alias.name] = alias.name
    return names


def _scopes(tree: ast.Module) -> Iterator[tuple[ast.Call, list[ast.stmt]]]:
    """Every call, with the body of the innermost function (or the module) around it."""

    def visit(node: ast.AST, scope: list[ast.stmt]) -> Iterator[tuple[ast.Call, list[ast.stmt]]]:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.body
            if isinstance(child, ast.Call):
                yield child, scope
            yield from visit(child, inner)

    yield from visit(tree, tree.body)


def metrics_in(path: Path) -> list[Metric]:
    """The metrics declared in one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    constructors = _metric_constructors(tree)
    if not constructors:
        return []
    strings = _module_strings(tree)
    where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    found: list[Metric] = []
    for call, scope in _scopes(tree):
        func = call.func
        kind = None
        if isinstance(func, ast.Name):
            kind = constructors.get(func.id)
        if kind is None:
            continue
        name_node = _argument(call, 0, "name")
        help_node = _argument(call, 1, "documentation")
        labels_node = _argument(call, 2, "labelnames")
        name = None if name_node is None else _text(name_node, strings)
        meaning = None if help_node is None else _text(help_node, strings)
        labels = () if labels_node is None else _labels(labels_node, scope)
        renaming = {item.arg for item in call.keywords} & {"namespace", "subsystem", "unit"}
        if name is None or meaning is None or labels is None or renaming:
            raise DeclarationError(
                f"{where}:{call.lineno}: cannot read this {kind}'s name, help or labels from "
                "the source; declare them with literals or module-level string constants "
                "(docs/generate_reference.py)"
            )
        if kind == "Counter":
            name = name.removesuffix("_total") + "_total"
        elif kind == "Info":
            name += "_info"
        found.append(Metric(name, kind.lower(), labels, " ".join(meaning.split()), where))
    return found


def metrics() -> list[Metric]:
    """Every metric declared under server/, sorted by name."""
    found = [metric for path in sorted(SERVER_DIR.rglob("*.py")) for metric in metrics_in(path)]
    by_name: dict[str, Metric] = {}
    for metric in found:
        if metric.name in by_name and by_name[metric.name] != metric:
            raise DeclarationError(
                f"{metric.name} is declared twice, differently: in {by_name[metric.name]}"
                f" and in {metric}"
            )
        by_name[metric.name] = metric
    return sorted(by_name.values(), key=lambda metric: metric.name)


# --- errors --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ErrorKind:
    name: str
    base: str
    grpc_code: str
    http_status: int
    meaning: str
    defined_in: str


def _modules_defining_subclasses() -> list[str]:
    """Modules under server/ that define a class deriving (by name) from ServingError's tree."""
    trees = {
        path: ast.parse(path.read_text(encoding="utf-8")) for path in PACKAGE_DIR.rglob("*.py")
    }
    known, modules = {"ServingError"}, set()
    grew = True
    while grew:
        grew = False
        for path, tree in trees.items():
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or node.name in known:
                    continue
                bases = {
                    base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                    for base in node.bases
                }
                if bases & known:
                    known.add(node.name)
                    grew = True
                    modules.add(path)
    return sorted(".".join(path.relative_to(SERVER_DIR).with_suffix("").parts) for path in modules)


def errors() -> list[ErrorKind]:
    """Every ServingError subclass, in the order errors.py (then other modules) define them."""
    from mnist_serving_server.core.errors import ServingError

    for name in _modules_defining_subclasses():
        importlib.import_module(name)

    kinds: list[type[ServingError]] = []

    def collect(cls: type[ServingError]) -> None:
        for sub in cls.__subclasses__():
            if sub not in kinds:
                kinds.append(sub)
                collect(sub)

    collect(ServingError)
    rows = []
    for kind in kinds:
        module = sys.modules[kind.__module__]
        where = Path(module.__file__ or "").resolve()
        rows.append(
            ErrorKind(
                name=kind.__name__,
                base=kind.__mro__[1].__name__,
                grpc_code=kind.status.grpc_code,
                http_status=kind.status.http_status,
                meaning=" ".join((kind.__doc__ or "").split()),
                defined_in=where.relative_to(ROOT).as_posix() if where.is_relative_to(ROOT) else "",
            )
        )
    return rows


# --- the document --------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    from mnist_serving_server.core.errors import INTERNAL, INTERNAL_MESSAGE

    lines = [
        "# Reference: flags, metrics, error kinds",
        "",
        "<!-- Generated by docs/generate_reference.py (`make docs`) from the code; do not edit",
        "     by hand: tests/unit/docs/test_docs_reference.py fails when it is stale. -->",
        "",
        "Generated from the code by `make docs` (`docs/generate_reference.py`); a test fails",
        "when this page differs from what the code declares. The prose around these tables:",
        "configuration in [architecture.md](architecture.md#configuration), metrics and their",
        "label values in [architecture.md](architecture.md#metrics) and",
        "[operations.md](operations.md#metrics-and-dashboard), errors per protocol in",
        "[v2_protocol.md](v2_protocol.md#errors).",
        "",
        "## Flags",
        "",
        "`mnist-serving --help` (`python -m mnist_serving_server --help`) prints the same. Every",
        "setting is a flag and an environment variable; a flag beats its variable, which beats",
        "the default. Read from `ServerConfig` in `server/mnist_serving_server/config.py`.",
        "",
        "| flag | environment variable | default | values | meaning |",
        "|---|---|---|---|---|",
    ]
    for flag in flags():
        lines.append(
            f"| `{flag.flag}` | `{flag.env}` | `{flag.default}` | {flag.values} "
            f"| {_cell(flag.meaning)} |"
        )
    lines += [
        "",
        "## Metrics",
        "",
        "Prometheus text on the metrics port (8002, `/metrics`). With `--workers N` the parent",
        "process serves them for all workers: counters and histograms add up, gauges as their",
        "declarations say. A counter's samples are `<name>` (and `<name without _total>_created`),",
        "a histogram's `<name>_bucket`, `<name>_sum` and `<name>_count`. Read from every",
        "prometheus_client declaration under `server/`.",
        "",
        "| metric | type | labels | meaning | declared in |",
        "|---|---|---|---|---|",
    ]
    for metric in metrics():
        labels = ", ".join(f"`{label}`" for label in metric.labels)
        lines.append(
            f"| `{metric.name}` | {metric.kind} | {labels} | {_cell(metric.meaning)} "
            f"| `{metric.declared_in}` |"
        )
    lines += [
        "",
        "## Errors",
        "",
        "Every way a call can fail is a kind (a subclass of `ServingError`,",
        "`server/mnist_serving_server/core/errors.py`) carrying its gRPC status and its HTTP",
        "status; both transports answer from it, and `mnist_serving_requests_total{code}`",
        "counts the gRPC status name. The message says what to fix, except for INTERNAL.",
        "",
        "| kind | gRPC status | HTTP status | when |",
        "|---|---|---|---|",
    ]
    for kind in errors():
        base = "" if kind.base == "ServingError" else f" (a kind of `{kind.base}`)"
        lines.append(
            f"| `{kind.name}`{base} | `{kind.grpc_code}` | {kind.http_status} "
            f"| {_cell(kind.meaning)} |"
        )
    lines += [
        f"| any other exception (a bug, a runtime failure) | `{INTERNAL.grpc_code}` "
        f"| {INTERNAL.http_status} | answered with {INTERNAL_MESSAGE!r}; the details go to the "
        "server log only |",
        "",
        "Statuses that no kind carries come from the transports themselves (gRPC's own",
        "`RESOURCE_EXHAUSTED` for a message over `--max-message-bytes`, `UNIMPLEMENTED` for an",
        "unknown method): [v2_protocol.md](v2_protocol.md#errors).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
        if current != text:
            print(f"{REFERENCE.relative_to(ROOT)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
