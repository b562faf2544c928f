"""The CLI's dispatch: each subcommand names its own handler, and `plan` runs without any server."""

import argparse
import json

import pytest

from tagging_platform import cli


def _leaf_parsers(parser: argparse.ArgumentParser, path=()):
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
        return
    for name, sub in subparsers[0].choices.items():
        yield from _leaf_parsers(sub, (*path, name))


def test_every_subcommand_has_its_own_handler():
    leaves = dict(_leaf_parsers(cli.build_parser()))
    handlers = {path: parser.get_default("func") for path, parser in leaves.items()}
    assert all(callable(h) for h in handlers.values()), [p for p, h in handlers.items() if not callable(h)]
    # One handler per subcommand: none branches again on which subcommand it was called for.
    assert len(set(handlers.values())) == len(handlers), handlers
    assert {("api",), ("api-key",), ("model", "list"), ("model", "promote"), ("model", "register")} <= set(leaves)


def test_api_key_is_not_routed_through_the_api_server():
    args = cli.build_parser().parse_args(["api-key", "revoke", "acme"])
    assert args.func is cli.run_api_key
    assert cli.build_parser().parse_args(["api"]).func is cli.run_api


def test_plan_prints_json_for_the_given_workload(capsys):
    assert cli.main(["plan", "--images", "100000", "--ms-per-image", "10", "--max-gpus", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["images"] == 100000 and plan["pods"] <= 4


def test_plan_without_a_workload_names_the_missing_option(capsys):
    assert cli.main(["plan"]) == 2
    assert "--images N is required" in capsys.readouterr().err


def test_a_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
