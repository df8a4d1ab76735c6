"""`mnist-client`: classify image files, check health, read model metadata and manage the
server's model repository (list, load, unload) from a shell.

Exit codes: 0 success; 1 the server failed the call (its message on stderr) or is not
serving; 2 usage error (bad flags, unreadable or non-PNG/JPEG files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from mnist_serving_client.connection import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, TlsConfig
from mnist_serving_client.errors import MnistServingError
from mnist_serving_client.prediction import NUM_CLASSES, Prediction
from mnist_serving_client.repository import RepositoryModel
from mnist_serving_client.sync_client import Client

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
TARGET_ENV = "MNIST_SERVING_TARGET"
TOKEN_ENV = "MNIST_SERVING_TOKEN"
JSON_INDENT = 2
TABLE_COLUMNS = ("NAME", "VERSION", "STATE", "REASON")
TABLE_GAP = "  "


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    try:
        client = _client_from_args(args)
    except (ValueError, OSError) as error:
        return _fail(EXIT_USAGE, f"mnist-client: {error}")
    with client:
        try:
            result: int = args.run(client, args)
        except MnistServingError as error:
            # Errors found before sending (no status code) are the caller's: usage errors.
            exit_code = EXIT_USAGE if error.code is None else EXIT_SERVER_ERROR
            return _fail(exit_code, f"mnist-client: {error}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-client",
        description="Classify handwritten digits with an mnist-serving server.",
        epilog="Exit codes: 0 success, 1 server error or not serving, 2 usage error.",
    )
    _add_connection_options(parser, suppress_defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser(
        "classify", help="classify PNG/JPEG files", description="Classify PNG/JPEG files."
    )
    classify.add_argument("files", nargs="+", metavar="FILE", help="PNG or JPEG image files")
    classify.add_argument(
        "--top-k", type=int, choices=range(1, NUM_CLASSES + 1), metavar="K",
        help=f"also list the K most probable digits (1-{NUM_CLASSES})",
    )  # fmt: skip
    classify.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_connection_options(classify, suppress_defaults=True)
    classify.set_defaults(run=_run_classify)

    health = commands.add_parser(
        "health", help="check the server's health (exit 0 when SERVING)",
        description="Print the grpc.health.v1 status; exit 0 when SERVING, else 1.",
    )  # fmt: skip
    health.add_argument(
        "--service", default="", help='service to check ("" = the whole server, the default)'
    )
    _add_connection_options(health, suppress_defaults=True)
    health.set_defaults(run=_run_health)

    metadata = commands.add_parser(
        "metadata", help="print the model's metadata as JSON",
        description="Print the model's metadata (KServe V2 ModelMetadata) as JSON.",
    )  # fmt: skip
    _add_connection_options(metadata, suppress_defaults=True)
    metadata.set_defaults(run=_run_metadata)

    models = commands.add_parser(
        "models", help="list the server's model repository",
        description="List every model version of the server's repository with its state "
        "(READY, UNAVAILABLE, LOADING, UNLOADING) and why it is not ready.",
    )  # fmt: skip
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--ready", action="store_true", help="list only the READY models")
    _add_connection_options(models, suppress_defaults=True)
    models.set_defaults(run=_run_models)

    load = commands.add_parser(
        "load", help="load (or reload) a model of the repository",
        description="Load (or reload) a model of the server's repository; exit 0 once loaded.",
    )  # fmt: skip
    load.add_argument("name", metavar="NAME", help="the model's name")
    _add_connection_options(load, suppress_defaults=True)
    load.set_defaults(run=_run_load)

    unload = commands.add_parser(
        "unload", help="unload a model",
        description="Unload a model; its requests then fail with NOT_FOUND until it is loaded.",
    )  # fmt: skip
    unload.add_argument("name", metavar="NAME", help="the model's name")
    _add_connection_options(unload, suppress_defaults=True)
    unload.set_defaults(run=_run_unload)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, *, suppress_defaults: bool) -> None:
    # The same options are accepted before and after the command; after it they must not
    # reset what was given before, hence SUPPRESS as the sub-command defaults.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress_defaults else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target", default=default(os.environ.get(TARGET_ENV, DEFAULT_TARGET)),
        help=f"server address (env {TARGET_ENV}; default {DEFAULT_TARGET})",
    )  # fmt: skip
    group.add_argument(
        "--timeout", type=float, default=default(DEFAULT_TIMEOUT_S), metavar="SECONDS",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT_S:g})",
    )  # fmt: skip
    group.add_argument(
        "--model", "--model-name", dest="model_name", default=default(""), metavar="NAME",
        help="model to classify with or describe (default: the server's)",
    )  # fmt: skip
    group.add_argument(
        "--model-version", default=default(""), metavar="VERSION",
        help="model version (default: the latest)",
    )  # fmt: skip
    group.add_argument(
        "--tls", action="store_true", default=default(False),
        help="use TLS (implied by the other TLS flags)",
    )  # fmt: skip
    group.add_argument("--ca-file", default=default(None), help="CA bundle (PEM) for TLS")
    group.add_argument("--client-cert", default=default(None), help="client certificate (mTLS)")
    group.add_argument("--client-key", default=default(None), help="client private key (mTLS)")
    group.add_argument(
        "--server-name", default=default(None), help="name to verify in the server's certificate"
    )
    group.add_argument(
        "--token", default=default(os.environ.get(TOKEN_ENV)),
        help=f"bearer token (env {TOKEN_ENV}; prefer --token-file on shared machines)",
    )  # fmt: skip
    group.add_argument("--token-file", default=default(None), help="file holding the bearer token")


def _client_from_args(args: argparse.Namespace) -> Client:
    tls_files = (args.ca_file, args.client_cert, args.client_key, args.server_name)
    tls = None
    if args.tls or any(value is not None for value in tls_files):
        tls = TlsConfig(
            ca_file=args.ca_file,
            client_cert_file=args.client_cert,
            client_key_file=args.client_key,
            server_name_override=args.server_name,
        )
    token = None if args.token_file else args.token
    return Client(
        args.target,
        timeout_s=args.timeout,
        model_name=args.model_name,
        model_version=args.model_version,
        tls=tls,
        token=token,
        token_file=args.token_file,
    )


def _run_classify(client: Client, args: argparse.Namespace) -> int:
    predictions = client.classify(list(args.files), top_k=args.top_k)
    if args.json:
        results = [
            {"file": file, **prediction.to_dict()}
            for file, prediction in zip(args.files, predictions, strict=True)
        ]
        print(json.dumps(results, indent=JSON_INDENT))
    else:
        for file, prediction in zip(args.files, predictions, strict=True):
            print(_describe(file, prediction))
    return EXIT_OK


def _describe(file: str, prediction: Prediction) -> str:
    line = f"{file}: {prediction.label}"
    if prediction.class_name and prediction.class_name != str(prediction.label):
        line += f" {prediction.class_name}"
    line += f" (confidence {prediction.confidence:.4f})"
    if prediction.top_k:
        ranked = ", ".join(f"{label}={prob:.4f}" for label, prob in prediction.top_k)
        line += f" top-{len(prediction.top_k)}: {ranked}"
    return line


def _run_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    print(status.name)
    return EXIT_OK if status.is_serving else EXIT_SERVER_ERROR


def _run_metadata(client: Client, args: argparse.Namespace) -> int:
    metadata = client.model_metadata()
    print(json.dumps(metadata.to_dict(), indent=JSON_INDENT))
    return EXIT_OK


def _run_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models(ready_only=args.ready)
    if args.json:
        print(json.dumps([model.to_dict() for model in models], indent=JSON_INDENT))
    else:
        print(format_models_table(models))
    return EXIT_OK


def format_models_table(models: Sequence[RepositoryModel]) -> str:
    """NAME / VERSION / STATE / REASON columns, left-aligned, a header line first."""
    rows = [TABLE_COLUMNS] + [(m.name, m.version, m.state, m.reason) for m in models]
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS))]
    return "\n".join(
        TABLE_GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _run_load(client: Client, args: argparse.Namespace) -> int:
    client.load_model(args.name)
    print(f"loaded {args.name}")
    return EXIT_OK


def _run_unload(client: Client, args: argparse.Namespace) -> int:
    client.unload_model(args.name)
    print(f"unloaded {args.name}")
    return EXIT_OK


def _fail(exit_code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
