"""One model flag, usage errors in one line, and help that reads cleanly (issue 30 items 4 and 7).

Every command that reads a model takes ``-m/--model`` (``--checkpoint`` an alias); evaluate, export
and serve also take it positionally. Click's usage errors (an unknown option, a missing argument,
a bad value) come out as cnnzoo's one line with exit code 2, on the real script.
"""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from cnnzoo.cli import app
from cnnzoo.cli.usage import command_path, reflowed

from support.cli import PROJECT, one_error_line, run_cnnzoo

MODEL_COMMANDS = [
    ["predict", "photo.jpg"],
    ["evaluate"],
    ["export"],
    ["benchmark"],
    ["serve"],
    ["explain", "photo.jpg"],
]


def cli(*args: str, width: int = 80):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(width), "TERMINAL_WIDTH": str(width)})


@pytest.mark.parametrize("spelling", ["-m", "--model", "--checkpoint"])
@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: c[0])
def test_every_model_reading_command_takes_the_one_model_flag(command, spelling, tmp_path):
    """The flag reaches the command: the model it names is the one looked for (and not found)."""
    line = one_error_line(cli(*command, spelling, str(tmp_path / "nothere.pt")))
    assert line == f"cnnzoo: error: {tmp_path / 'nothere.pt'}: checkpoint not found"


@pytest.mark.parametrize("command", ["evaluate", "export", "benchmark", "serve"])
def test_the_model_is_also_positional_where_it_is_the_subject(command, tmp_path):
    line = one_error_line(cli(command, str(tmp_path / "a.pt")))
    assert line.endswith(f"{tmp_path / 'a.pt'}: checkpoint not found")
    line = one_error_line(cli(command, str(tmp_path / "a.pt"), "-m", str(tmp_path / "b.pt")))
    assert line == f"cnnzoo: error: two models given ({tmp_path / 'a.pt'} and --model {tmp_path / 'b.pt'}); give one"
    # the same model both ways is one model
    line = one_error_line(cli(command, str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "a.pt")))
    assert line.endswith("a.pt: checkpoint not found")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["export", "--nonsense", "x"], "cnnzoo: error: export: no such option: --nonsense (see cnnzoo export --help)"),
        (["explain"], "cnnzoo: error: explain: missing argument 'IMAGE' (see cnnzoo explain --help)"),
        (["predict", "--top-k", "0", "a.jpg"], "cnnzoo: error: predict: invalid value for '--top-k' / '-k': "),
        (["nosuch"], "cnnzoo: error: no such command 'nosuch' (see cnnzoo --help)"),
        # Click's parser raises this one without its context: the command is read from the arguments
        (["export", "-m"], "cnnzoo: error: export: option '-m' requires an argument (see cnnzoo export --help)"),
        (
            ["data", "check", "--bogus"],
            "cnnzoo: error: data check: no such option: --bogus (see cnnzoo data check --help)",
        ),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, expected):
    """On the installed script, as users meet them: no Rich box, no "Usage:" block."""
    result = run_cnnzoo(args, cwd=PROJECT)
    line = one_error_line(result)
    assert line.startswith(expected), line
    assert "╭" not in result.stderr and "Usage:" not in result.stderr


def test_the_command_path_is_read_from_the_arguments_when_click_gives_none():
    group = typer.main.get_command(app)
    assert command_path(group, ["data", "check", "-c"]) == "cnnzoo data check"
    assert command_path(group, ["--debug", "export", "-m"]) == "cnnzoo export"
    assert command_path(group, ["-m"]) == "cnnzoo"
    assert command_path(group, ["photo.jpg", "predict"]) == "cnnzoo"  # not a command: the path stops there


def test_debug_still_works_and_a_bare_group_still_shows_its_help():
    result = run_cnnzoo(["--debug", "export", "--nonsense"], cwd=PROJECT)
    assert one_error_line(result).startswith("cnnzoo: error: export: no such option: --nonsense")
    bare = run_cnnzoo(["data"], cwd=PROJECT)
    assert "check" in bare.stdout and "shards" in bare.stdout and bare.stderr == ""


HELP_COMMANDS = [
    [],
    ["train"],
    ["summary"],
    ["predict"],
    ["evaluate"],
    ["export"],
    ["serve"],
    ["explain"],
    ["lr-find"],
    ["sweep"],
    ["data"],
    ["data", "check"],
    ["data", "shards"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "cnnzoo")
def test_help_shows_no_type_placeholders_and_plain_usage(command):
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "[[" not in usage and "{" not in usage, usage
    assert re.search(r"Usage: cnnzoo", usage), usage


def test_help_names_the_arguments_as_click_writes_them():
    assert "Usage: cnnzoo predict [OPTIONS] [IMAGES]..." in cli("predict", "--help").output
    assert "Usage: cnnzoo explain [OPTIONS] IMAGE" in cli("explain", "--help").output
    for command in ("evaluate", "export", "benchmark", "serve"):
        assert f"Usage: cnnzoo {command} [OPTIONS] [MODEL]" in cli(command, "--help").output


@pytest.mark.parametrize("command", ["train", "evaluate", "data check"])
def test_data_help_names_every_kind_of_source(command):
    text = " ".join(cli(*command.split(), "--help", width=200).output.split())
    assert "manifest" in text and "shards" in text and "Hugging Face" in text
    assert "Image folder (sets" not in text and "Labelled folder:" not in text


def test_docstring_prose_is_reflowed_and_examples_kept():
    text = (
        "Title line.\n\nA sentence broken\nby hand in two.\n  cnnzoo export --int8\n"
        "Example:  cnnzoo predict a.jpg\nMore prose\nhere."
    )
    assert reflowed(text) == (
        "Title line.\n\nA sentence broken by hand in two.\n  cnnzoo export --int8\n"
        "Example:  cnnzoo predict a.jpg\nMore prose here."
    )


def test_export_help_does_not_break_a_sentence_at_the_source_line():
    """A narrow terminal wraps the prose where it likes, never where the docstring's lines ended."""
    text = cli("export", "--help", width=200).output
    assert "NaN or infinite probabilities" in " ".join(text.split())
    assert re.search(r"--tolerance, or gives NaN or infinite", text), text


def test_predict_with_nothing_to_predict_says_what_to_give():
    line = one_error_line(cli("predict"))
    assert "give the images to predict" in line and "e.g. cnnzoo predict photo.jpg" in line
    assert "cnnzoo predict --data test.csv" in line
    assert one_error_line(cli("predict", "a.jpg", "--data", "t.csv")).endswith("not both")


def _commands(group, path=()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def test_help_keeps_every_bracketed_phrase_rich_would_read_as_markup():
    """Rich reads ``[true, false]`` in a docstring as a style tag and drops it: every bracketed
    phrase a command or option's help text holds must reach the rendered help."""
    group = typer.main.get_command(app)
    for path, command in _commands(group):
        texts = [command.help or ""] + [p.help or "" for p in command.params if getattr(p, "help", None)]
        rendered = " ".join(cli(*path, "--help", width=400).output.split())
        for text in texts:
            for phrase in re.findall(r"(?<!\\)\[[a-z][^\[\]]*\]", text.replace("\\\\[", "")):
                assert " ".join(phrase.split()) in rendered, (path, phrase)
