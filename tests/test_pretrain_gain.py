"""benchmarks/pretrain_gain.py (issue 30, what pretraining buys): models scored side by side on a
split's test rows and on stand-ins of them, with the unfamiliar check's AUROC of each kind."""
import re

from conftest import SAMPLE, sample_paths

from benchmarks import pretrain_gain, standins


def test_two_models_scored_on_the_test_rows_and_the_standins(tmp_path):
    cells = sample_paths(4)  # 4 a class: 2 for each "lab"
    rows = ["path,label,group,split,source"]
    for i, p in enumerate(cells):
        lab = "raabin" if i % 2 else "pbc"
        rows.append(f"{p},{p.parent.name},{p.stem},test,{lab}")
    rows.append(f"{cells[0]},{cells[0].parent.name},train0,train,raabin")  # a train row is not scored
    split = tmp_path / "split.csv"
    split.write_text("\n".join(rows) + "\n")
    standins.make(SAMPLE, tmp_path / "standins" / "raabin", n=10, kinds=("clean", "blur + pale"))
    out = tmp_path / "gain.md"

    assert pretrain_gain.main(["--split", str(split), "--model", "fast=fast", "--model", "same again=fast",
                               "--standins", str(tmp_path / "standins"), "--work", str(tmp_path / "work"),
                               "--threads", "1", "--out", str(out)]) == 0

    lines = out.read_text().splitlines()
    table = [x for x in lines if x.startswith("| `")]
    assert [x.split("|")[1].strip() for x in table] == ["`fast`", "`same again`"]
    assert table[0].split("|")[2:] == table[1].split("|")[2:]  # the same model twice: the same figures
    header = next(x for x in lines if x.startswith("| model"))
    assert "raabin stand-ins: clean / blur-pale macro-F1" in header
    assert "unfamiliar AUROC against the test splits, blur-pale (raabin / pbc)" in header
    cells_ = [c.strip() for c in table[0].split("|")[1:-1]]
    assert re.fullmatch(r"\d\.\d{4} / \d\.\d{4} \(.+\)", cells_[1])            # raabin test split
    assert re.fullmatch(r"\d\.\d{3} / \d\.\d{3}", cells_[4])                     # raabin clean / blur-pale
    assert cells_[5] == "- / -"                                                 # no pbc stand-ins made
    assert re.fullmatch(r"\d\.\d{3}", cells_[-1])                               # blur-pale AUROC, raabin's
    # the evaluation folders hold each set's predictions: the 10 raabin test rows (not the train row)
    assert len((tmp_path / "work" / "fast" / "raabin" / "predictions.csv").read_text().splitlines()) == 1 + 10
