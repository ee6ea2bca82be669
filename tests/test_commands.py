"""The ``keras-clmr`` subcommands answer ``--help`` from any folder, without loading Keras."""

import json
import os
import subprocess
import sys

from keras_clmr.commands import COMMANDS

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "command_help.py")
EXPECTED = (
    "prepare",
    "pretrain",
    "evaluate",
    "supervised",
    "cover",
    "convert",
    "export",
    "card",
    "publish",
    "embed",
    "tag",
    "explain",
)


def test_every_subcommand_answers_help_outside_the_repository(tmp_path):
    # cwd outside the repository: keras_clmr must come from the installed package, not from ./
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, WORKER], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    overview = report["overview"]
    assert overview["status"] == 0
    listed = [line.split()[0] for line in overview["out"].splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS) and set(EXPECTED) <= set(listed)
    for name, result in report["commands"].items():
        assert result["status"] == 0, (name, result["err"])
        assert f"keras-clmr {name}" in result["out"], name
    # Each absl command lists its own flags, e.g. pretrain's --model and export's --format.
    assert "--batch_size" in report["commands"]["pretrain"]["out"]
    assert "--format" in report["commands"]["export"]["out"]
    # Flags of the shared groups (commands/_flags) are listed with the command's own.
    for flag in ("--output_dir", "--sample_rate", "--data_dir", "--demo_clips", "--label_fraction"):
        assert flag in report["commands"]["evaluate"]["out"], flag
        assert flag in report["commands"]["supervised"]["out"], flag
    assert "--checkpoint" in report["commands"]["cover"]["out"]
    assert "--data_dir" in report["commands"]["pretrain"]["out"]
    assert "--top-k" in report["commands"]["tag"]["out"]
    assert "filters" in report["commands"]["explain"]["out"]
    assert report["heavy_imports"] == []


def test_flag_errors_print_the_error_and_one_usage_line(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "keras-clmr")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "keras_clmr.cli"]
    done = subprocess.run(
        [*command, "card", "--no_such_flag=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "keras-clmr card: error: Unknown command line flag 'no_such_flag'"
    assert len(lines) == 2 and lines[1].startswith("usage: keras-clmr card ")
    assert done.stdout == ""


def test_unknown_subcommand_and_no_arguments(capsys):
    from keras_clmr import cli

    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'nope'" in err and "usage: keras-clmr" in err
    assert cli.main([]) == 2
    assert "pretrain" in capsys.readouterr().err
