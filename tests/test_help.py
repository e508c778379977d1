"""``--help`` of every command as an 80-column terminal shows it."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from pedcrowd.cli import app, unknown_option_hint

runner = CliRunner()


def _commands():
    """(words, click command) of every leaf command: ("train",), ("data", "synth"), ..."""
    top = typer.main.get_command(app)
    ctx = top.make_context("pedcrowd", ["--help"], resilient_parsing=True)
    found = []

    def walk(group, words, ctx):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if hasattr(cmd, "list_commands"):
                walk(cmd, (*words, name), ctx)
            else:
                found.append(((*words, name), cmd))

    walk(top, (), ctx)
    return found


COMMANDS = _commands()


def _help(words) -> str:
    result = runner.invoke(app, [*words, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed():
    names = {" ".join(w) for w, _ in COMMANDS}
    assert {"train", "eval", "infer", "compare", "analyze", "config", "data synth", "data stats"} <= names


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=lambda w: " ".join(w))
def test_help_renders_at_80_columns_with_every_default_and_an_example(words):
    text = _help(words)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [x for x in lines if len(x) > 80]
    assert "<bool>" not in text  # flags take no value
    assert re.search(r"^  Examples?:$", text, re.M)
    cmd = dict(COMMANDS)[words]
    ctx = cmd.make_context(" ".join(words), [], resilient_parsing=True)
    for param in cmd.params:
        if param.param_type_name == "argument":
            assert param.metavar and param.metavar.isupper(), (param.name, param.metavar)
            continue
        if param.required or param.name == "help" or (param.is_flag and not param.secondary_opts):
            continue  # a bare flag is off unless given
        record = param.get_help_record(ctx)[1]
        assert "default:" in record.lower(), f"{' '.join(words)} {param.opts[0]}: {record}"


def test_help_shows_defaults_that_rich_markup_used_to_eat():
    text = " ".join(_help(("data", "synth")).split())
    assert "[default: --images / 5]" in text
    assert "[default: the preset's, medium]" in text


def test_top_level_list_fits_80_columns_without_cuts():
    text = _help(())
    commands = text.split("Commands:")[1]
    assert "..." not in commands
    for words, _ in COMMANDS:
        assert re.search(rf"^  {words[0]} ", commands, re.M)


def test_train_help_says_where_the_config_keys_are():
    text = " ".join(_help(("train",)).split())
    assert "pedcrowd config" in text


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--epochs", "2"], "--set train.epochs=2"),
        (["train", "--batch-size=4"], "--set train.batch_size=4"),
        (["train", "--lr", "0.1", "--epochs"], "--set optim.lr=0.1"),
        (["train", "--weights"], "--set model.weights=VALUE"),
    ],
)
def test_unknown_train_option_that_is_a_config_key_hints_at_set(args, expected):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert expected in result.output
    assert "pedcrowd config" in result.output


def test_unknown_option_hint_only_for_config_keys_and_train():
    assert unknown_option_hint("--bogus", ["train", "--bogus"]) == ""
    assert unknown_option_hint("--epochs", ["eval", "--epochs", "2"]) == ""


def test_set_with_a_near_miss_suggests_the_full_key():
    result = runner.invoke(app, ["train", "--set", "train.epoch=2"])
    assert result.exit_code == 2
    assert "did you mean 'train.epochs'?" in result.output


def test_config_prints_every_key_and_applies_set():
    import yaml

    from pedcrowd.engine.config import Config, config_to_dict

    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output) == config_to_dict(Config())
    result = runner.invoke(app, ["config", "--set", "train.epochs=3"])
    assert yaml.safe_load(result.output)["train"]["epochs"] == 3
