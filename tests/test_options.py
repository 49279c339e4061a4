"""One set of inference options, the flags that set them defined once, and a CLI that parses
without importing torch."""
import subprocess
import sys

import pytest

from conftest import REPO


def imported_after(argv: list[str]) -> tuple[int, set[str]]:
    """Run `python -m wbcnet ARGV` in a fresh process; its exit code and the top-level modules it
    had imported when it exited."""
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})), "
            "file=sys.__stderr__))\n"
            "from wbcnet.cli.main import main\n"
            f"sys.exit(main({argv!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    line = next(l for l in proc.stderr.splitlines() if l.startswith("MODULES"))
    return proc.returncode, set(line.split()[1:])


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["train", "--help"], ["count", "--help"],
                                  ["predict"], ["evaluate", "--batch-size", "x"]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    rc, modules = imported_after(argv)
    assert rc in (0, 2)
    assert "torch" not in modules, argv


def test_python_m_wbcnet_help_does_not_import_torch():
    code = ("import runpy, sys\nsys.argv = ['wbcnet', '--help']\n"
            "try:\n    runpy.run_module('wbcnet', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


# --- one set of inference options ----------------------------------------------------------------------

from wbcnet.cli.main import build_parser, main
from wbcnet.core.errors import WbcnetError
from wbcnet.cli.options import InferenceOptions

MODEL_COMMANDS = {"evaluate": ["--data", "D", "--out", "O"], "predict": ["x.jpg"], "count": ["f.jpg", "--out", "O"],
                  "adapt": ["--out", "O"], "serve": []}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_every_model_command_takes_checkpoint_device_and_threads(command):
    args = build_parser().parse_args([command, *MODEL_COMMANDS[command], "--checkpoint", "C", "--device", "auto",
                                      "--threads", "1"])
    opts = InferenceOptions.from_args(args)
    assert (opts.checkpoint, opts.device, opts.threads) == ("C", "auto", 1)


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
@pytest.mark.parametrize("name", ["fast", "accurate"])
def test_every_model_command_takes_a_zoo_model_by_name(command, name):
    args = build_parser().parse_args([command, *MODEL_COMMANDS[command], "--model", name])
    assert InferenceOptions.from_args(args).checkpoint == name


def test_options_from_flags_keep_each_commands_defaults():
    parse = build_parser().parse_args
    assert InferenceOptions.from_args(parse(["evaluate", "--data", "D", "--out", "O"])).batch_size == 128
    opts = InferenceOptions.from_args(parse(["predict", "x.jpg", "--no-shift-check", "--tta", "--workers", "2",
                                             "--min-confidence", "0.7"]))
    assert opts == InferenceOptions(batch_size=64, workers=2, min_confidence=0.7, shift_check=False, tta=True)


def test_shared_flags_are_defined_once():
    cli = (REPO / "src" / "wbcnet" / "cli/main.py").read_text()
    options = (REPO / "src" / "wbcnet" / "cli/options.py").read_text()
    for flag in ("--model", "--workers", "--overwrite", "--batch-size", "--min-confidence", "--no-shift-check",
                 "--device", "--threads", "--tta"):
        assert f'"{flag}"' not in cli and options.count(f'(["{flag}"') == 1, flag


@pytest.mark.parametrize("kw, needle", [({"device": "gpu"}, "--device gpu"), ({"batch_size": 0}, "--batch-size 0"),
                                        ({"threads": 0}, "--threads 0"), ({"workers": -1}, "--workers -1"),
                                        ({"min_confidence": 2.0}, "--min-confidence 2.0")])
def test_options_are_checked_once_with_one_line(kw, needle):
    with pytest.raises(WbcnetError) as e:
        InferenceOptions(**kw)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_a_bad_option_is_one_line_before_the_model_loads(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--batch-size", "0", "--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "wbcnet predict: error: --batch-size 0: must be a whole number, 1 or more"


def test_threads_set_torchs_threads_for_threads_started_after_too():
    """serve's model thread starts after the options are applied: it runs with their threads."""
    import threading

    import torch

    before, seen = torch.get_num_threads(), []
    try:
        InferenceOptions(threads=1).apply_threads()
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 1 and seen == [1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv, needle", [
    (["adapt", "--out", "O"], "give --data"),
    (["adapt", "--out", "O", "--data", "D", "--shots", "5,x"], "--shots 5,x"),
    (["adapt", "--out", "O", "--data", "D", "--repeats", "0"], "--repeats 0"),
    (["tune", "--config", "c.yaml", "--trials", "0"], "--trials 0"),
    (["tune", "--config", "c.yaml", "--trials", "2", "--timeout", "-1"], "--timeout -1"),
    (["serve", "--max-files", "0"], "--max-upload-mb and --max-files"),
    (["count", "f.jpg", "--out", "O", "--target", "0"], "--target 0"),
])
def test_command_options_are_checked_before_any_work(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_command_option_flags_come_from_their_dataclasses():
    from wbcnet.cli.options import AdaptOptions, ServeOptions, TuneOptions
    from wbcnet.core.flags import from_args as from_flags

    parse = build_parser().parse_args
    assert from_flags(ServeOptions, parse(["serve"])) == ServeOptions()
    assert from_flags(TuneOptions, parse(["tune", "--config", "c.yaml", "--trials", "3"])) == \
        TuneOptions(config="c.yaml", trials=3)
    a = from_flags(AdaptOptions, parse(["adapt", "--out", "O", "--data", "D", "--shots", "10,5,10"]))
    assert a == AdaptOptions(data="D", out="O", shots="10,5,10") and a.shot_counts() == [5, 10]


def test_cli_only_parses_and_calls():
    assert len((REPO / "src" / "wbcnet" / "cli/main.py").read_text().splitlines()) < 300


def test_cache_dir_none_means_memory_only():
    import argparse

    from wbcnet.training.config import add_train_flags, given_flags

    p = argparse.ArgumentParser()
    add_train_flags(p)
    assert given_flags(p.parse_args(["--cache-dir", "none"]))["cache_dir"] is None
    assert given_flags(p.parse_args(["--cache-dir", "c"]))["cache_dir"] == "c"
