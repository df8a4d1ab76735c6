"""`mnist-client` argument parsing and the models table, without a server."""

from __future__ import annotations

import pytest

from mnist_serving_client import RepositoryModel
from mnist_serving_client.cli import EXIT_USAGE, build_parser, format_models_table, main


def test_model_option_and_its_old_spelling():
    parser = build_parser()
    for flag in ("--model", "--model-name"):
        args = parser.parse_args(["classify", flag, "fashion", "--model-version", "3", "x.png"])
        assert (args.model_name, args.model_version) == ("fashion", "3")
    # Before the command too, and not reset by the command's own defaults.
    args = parser.parse_args(["--model", "fashion", "classify", "x.png"])
    assert args.model_name == "fashion"


def test_repository_commands_parse():
    parser = build_parser()
    assert parser.parse_args(["models"]).json is False
    args = parser.parse_args(["models", "--json", "--ready"])
    assert (args.json, args.ready) == (True, True)
    assert parser.parse_args(["load", "fashion"]).name == "fashion"
    assert parser.parse_args(["unload", "fashion"]).name == "fashion"


@pytest.mark.parametrize("argv", [["load"], ["unload"], ["unload", "a", "b"]])
def test_load_and_unload_need_one_name(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_an_empty_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    # Found before anything is sent: exit 2, no connection needed.
    assert main(["--target", "127.0.0.1:9", "load", ""]) == EXIT_USAGE
    assert "non-empty model name" in capsys.readouterr().err


def test_models_table_aligns_columns():
    table = format_models_table(
        [
            RepositoryModel("mnist", "1", "READY", ""),
            RepositoryModel("fashion", "12", "UNAVAILABLE", "unloaded"),
        ]
    )
    assert table.splitlines() == [
        "NAME     VERSION  STATE        REASON",
        "mnist    1        READY",
        "fashion  12       UNAVAILABLE  unloaded",
    ]


def test_an_empty_repository_is_just_the_header():
    assert format_models_table([]) == "NAME  VERSION  STATE  REASON"
