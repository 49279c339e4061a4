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
            "from wbcnet.cli import main\n"
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
