"""Ctrl-C stops a command within a few seconds, exits 130 with one word and no traceback, and
leaves an earlier output at the same --out as it was: predict, count, evaluate, adapt and train.

Each command runs as a user runs it, a process of its own (`python -m wbcnet`, with faulthandler
ready on SIGUSR1), on the bundled pictures linked many times over so that it is still working;
SIGINT goes to its process group, as a terminal's Ctrl-C does, once its own output shows it at
work. A command still running LIMIT seconds later has its threads' stacks dumped and is killed,
and the test says where it hung."""
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, folder_state, small_config

FIELDS = Path(__file__).parent / "data" / "fields"

LIMIT = 5.0  # seconds from Ctrl-C to the exit: "a second or two" here, with room for a busy machine
COPIES = 8   # the sample's 301 cells linked this many times: 2,408 pictures, seconds of decoding
# Started as `python -m wbcnet` starts (wbcnet/__main__.py), with the threads' stacks on SIGUSR1.
# Ctrl-C is made to raise KeyboardInterrupt, as it does for a command typed at a terminal: a pytest
# started in the background by a shell without job control (`bash .ci/run &`) inherits SIGINT
# ignored, Python then installs no handler, and the command would rightly carry on (nohup's use).
START = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
         "signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from wbcnet.cli.main import main; sys.exit(main(sys.argv[1:]))")
@dataclass
class Stopped:
    code: int
    seconds: float      # from SIGINT to the exit
    out: str
    err: str


def run_and_interrupt(argv: list[str], cwd: Path, when: str, after: float = 0.5, start_timeout: float = 180) -> Stopped:
    """`wbcnet ARGV` in `cwd`; once `when` appears in its output, and `after` seconds more, Ctrl-C."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", START, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    got = {"out": bytearray(), "err": bytearray()}

    def read(stream, key):  # raw chunks: progress bars end their lines with \r, not \n
        while chunk := os.read(stream.fileno(), 65536):
            got[key] += chunk

    readers = [threading.Thread(target=read, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, "err"), daemon=True)]
    for r in readers:
        r.start()

    def text(key):
        return bytes(got[key]).decode(errors="replace")

    try:
        deadline = time.monotonic() + start_timeout
        while when not in text("out") + text("err"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never saw {when!r} (exit {proc.poll()}):\n{text('out')[-2000:]}\n{text('err')[-3000:]}")
            time.sleep(0.05)
        time.sleep(after)
        assert proc.poll() is None, f"finished before Ctrl-C: make its work bigger\n{text('err')[-2000:]}"
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        try:
            proc.wait(LIMIT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(1.5)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            for r in readers:
                r.join(10)
            stacks = text("err")
            pytest.fail(f"still running {LIMIT:g} s after Ctrl-C; where its threads were:\n{stacks[-6000:]}")
        seconds = time.monotonic() - sent
        for r in readers:
            r.join(10)
        return Stopped(proc.returncode, seconds, text("out"), text("err"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def stopped_cleanly(s: Stopped, last_line: str = "interrupted") -> None:
    assert s.code == 130, (s.code, s.err[-3000:])
    assert s.seconds < LIMIT
    assert "Traceback" not in s.err and "Exception" not in s.err, s.err[-3000:]
    assert s.err.replace("\r", "\n").strip().splitlines()[-1] == last_line, s.err[-1000:]


def nothing_beside(folder: Path, *kept: str) -> None:
    """No hidden folder or temporary file left beside the outputs (a set-aside earlier output, an
    unfinished count, a half-written file)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept), sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def many_cells(tmp_path_factory) -> Path:
    """The sample's cells as an ImageFolder, each linked COPIES times."""
    root = tmp_path_factory.mktemp("many") / "cells"
    for d in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        (root / d.name).mkdir(parents=True)
        for k in range(COPIES):
            for p in sorted(d.glob("*.jpg")):
                (root / d.name / f"{k}-{p.name}").symlink_to(p)
    return root


def earlier_output(folder: Path) -> dict[str, bytes]:
    """An earlier command's output in `folder` (a few files and a subfolder); its state."""
    (folder / "fields").mkdir(parents=True)
    (folder / "summary.json").write_text('{"made": "by an earlier run"}\n')
    (folder / "cells.csv").write_text("file,class\nold.jpg,Neutrophil\n")
    (folder / "fields" / "old.jpg").write_bytes(b"\xff\xd8\xff earlier picture")
    return folder_state(folder)


def test_ctrl_c_stops_predict_while_it_decodes_and_keeps_the_earlier_csv(many_cells, tmp_path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("file,predicted\nearlier.jpg,Lymphocyte\n")
    s = run_and_interrupt(["predict", str(many_cells), "--out", str(csv)], tmp_path, when="decoding")
    stopped_cleanly(s)
    assert csv.read_text() == "file,predicted\nearlier.jpg,Lymphocyte\n"
    nothing_beside(tmp_path, "predictions.csv")


def test_ctrl_c_stops_count_and_overwrite_keeps_the_earlier_count(tmp_path):
    fields = tmp_path / "fields"
    fields.mkdir()
    for k in range(30):
        for p in sorted(FIELDS.glob("*.jpg")):
            (fields / f"{k}-{p.name}").symlink_to(p)
    out = tmp_path / "out"
    before = earlier_output(out)
    s = run_and_interrupt(["count", str(fields), "--out", str(out), "--overwrite"], tmp_path, when="counting",
                          after=1.0)
    stopped_cleanly(s)
    assert folder_state(out) == before
    nothing_beside(tmp_path, "fields", "out")


def test_ctrl_c_stops_evaluate_and_overwrite_keeps_the_earlier_report(many_cells, tmp_path):
    out = tmp_path / "out"
    before = earlier_output(out)
    s = run_and_interrupt(["evaluate", "--data", str(many_cells), "--out", str(out), "--overwrite"], tmp_path,
                          when="decoding")
    stopped_cleanly(s)
    assert folder_state(out) == before
    nothing_beside(tmp_path, "out")


def test_ctrl_c_stops_adapt_and_keeps_the_earlier_suggestions(many_cells, tmp_path):
    """`wbcnet adapt --suggest` into a folder that holds suggestions not labelled yet (which it
    would replace once it has new ones)."""
    out = tmp_path / "to-label"
    (out / "cells").mkdir(parents=True)
    (out / "suggest.csv").write_text("path,label,rank,predicted,confidence,reason\n"
                                     "cells/0001.png,,1,Neutrophil,0.510,uncertain\n")
    (out / "cells" / "0001.png").write_bytes(b"\x89PNG earlier cell")
    before = folder_state(out)
    s = run_and_interrupt(["adapt", "--unlabelled", str(many_cells), "--suggest", "5", "--out", str(out)], tmp_path,
                          when="reading cells")
    stopped_cleanly(s)
    assert folder_state(out) == before
    nothing_beside(tmp_path, "to-label")


def test_ctrl_c_stops_train_in_mid_epoch_and_the_run_resumes(tmp_path):
    """A run stopped after its first epoch is resumed, and Ctrl-C'd in its second: its folder is as
    the first epoch left it, and the message says how to go on."""
    from wbcnet.training.classifier import fit

    class Stop(Exception):
        pass

    def stop(epoch, row):
        raise Stop

    run = tmp_path / "run"
    # Epochs of a second or so: larger pictures, small batches, one thread (two fight for a busy machine's cores).
    cfg = small_config(SAMPLE, run, epochs=2, img_size=160, batch_size=2, threads=1, progress=True,
                       merge_near_duplicates=False, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(Stop):
        fit(cfg, on_epoch_end=stop)
    before = folder_state(run)
    assert "last.safetensors" in before
    s = run_and_interrupt(["train", "--resume", str(run)], tmp_path, when="epoch 2/2", after=0.1)
    stopped_cleanly(s, f"interrupted; resume with: wbcnet train --resume {run}")
    assert folder_state(run) == before
    nothing_beside(tmp_path, "run", "cache")


@pytest.mark.parametrize("where", ["folder", "link", "working folder"])
def test_overwrite_replaces_an_output_only_once_the_command_has_finished(tmp_path, monkeypatch, where):
    """prepare_output_dir(overwrite=True) inside earlier_outputs_kept (every CLI command): the
    earlier files are put back if the command raises, and gone once it returns; a linked --out,
    or the folder the command runs in, has its files moved aside inside it instead."""
    from wbcnet.core.files import earlier_outputs_kept, prepare_output_dir

    real = tmp_path / "real"
    before = earlier_output(real)
    out = real
    if where == "link":
        out = tmp_path / "link"
        out.symlink_to(real)
    elif where == "working folder":
        monkeypatch.chdir(real)
        out = Path(".")
    with pytest.raises(KeyboardInterrupt), earlier_outputs_kept():
        prepare_output_dir(out, overwrite=True)
        assert not [p for p in Path(out).iterdir() if not p.name.startswith(".")]
        (Path(out) / "half-written.csv").write_text("x")
        raise KeyboardInterrupt
    assert folder_state(real) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["real"] + (["link"] if where == "link" else []))
    with earlier_outputs_kept():
        prepare_output_dir(out, overwrite=True)
        (Path(out) / "new.csv").write_text("new")
    assert folder_state(real) == {"new.csv": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["real"] + (["link"] if where == "link" else []))
    prepare_output_dir(out, overwrite=True)  # outside a command: emptied at once, as before
    assert not any(real.iterdir())


def test_what_ctrl_c_says_of_a_run(tmp_path):
    from argparse import Namespace

    from wbcnet.cli.main import interrupted

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "last.safetensors").write_bytes(b"")
    (tmp_path / "started").mkdir()
    train = dict(command="train", resume=None)
    assert interrupted(Namespace(**train, out=str(tmp_path / "kept"))) == \
        f"interrupted; resume with: wbcnet train --resume {tmp_path / 'kept'}"
    assert interrupted(Namespace(command="train", resume=str(tmp_path / "kept"), out=None)).endswith(
        f"--resume {tmp_path / 'kept'}")
    assert interrupted(Namespace(**train, out=str(tmp_path / "gone"))).startswith(
        "interrupted before the first checkpoint: nothing of the run was kept")
    assert interrupted(Namespace(**train, out=str(tmp_path / "started"))) == \
        f"interrupted before the first checkpoint: {tmp_path / 'started'} can't be resumed; start the run again"
    assert interrupted(Namespace(**train, out=None)) == "interrupted; resume with: wbcnet train --resume <run folder>"
    assert interrupted(Namespace(command="count")) == "interrupted"
