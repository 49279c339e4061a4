"""benchmarks/levers.py (issue 20's lever table): manifests from a run's split, the runs' configs,
ensembles from evaluations, the table; benchmarks/model_speed.py runs."""
import csv
from argparse import Namespace
from pathlib import Path

from conftest import REPO

from benchmarks import levers, model_speed

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def write_predictions(folder: Path, rows: list[tuple[str, str, list[float]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true", "predicted", "confidence"] + [f"p_{c}" for c in CLASSES])
        for path, true, p in rows:
            best = max(range(5), key=p.__getitem__)
            w.writerow([path, true, CLASSES[best], p[best]] + p)


def test_prepare_maps_the_split_onto_the_packed_cells(tmp_path):
    packed = tmp_path / "packed"
    for lab, cls, stem in [("raabin", "Neutrophil", "a_1"), ("raabin", "Eosinophil", "b_1"), ("pbc", "Monocyte", "MO_1")]:
        (packed / lab / cls).mkdir(parents=True, exist_ok=True)
        (packed / lab / cls / f"{stem}.webp").write_bytes(b"x")
    split = tmp_path / "split.csv"
    split.write_text("path,label,group,split,source\n"
                     "x/Neutrophil/a_1.jpg,Neutrophil,a,train,raabin\n"
                     "x/Eosinophil/b_1.jpg,Eosinophil,b,val,raabin\n"
                     "x/Monocyte/MO_1.jpg,Monocyte,MO_1,train,pbc\n"
                     "x/Monocyte/MO_2.jpg,Monocyte,MO_2,train,pbc\n"     # not packed
                     "x/Neutrophil/c_1.jpg,Neutrophil,c,test,raabin\n")  # the test split stays out
    levers.prepare(packed, split)
    m = packed / "manifests"
    assert (m / "raabin_train.csv").read_text().splitlines()[1] == "../raabin/Neutrophil/a_1.webp,Neutrophil,a"
    assert len((m / "pbc_train.csv").read_text().splitlines()) == 2
    assert (m / "both_val.csv").read_text().splitlines()[1:] == ["../raabin/Eosinophil/b_1.webp,Eosinophil,b"]
    for name in ("raabin_train.csv", "pbc_train.csv", "both_val.csv"):  # every manifest row is a packed file
        with open(m / name, newline="") as fh:
            assert all((m / row["path"]).exists() for row in csv.DictReader(fh))


def test_the_student_learns_from_a_run_of_the_same_table(tmp_path):
    args = Namespace(out=tmp_path / "lev", packed=tmp_path / "packed", device="cpu", parallel=2, epochs=None)
    cfg = levers.run_config("distilled-112", args)
    assert cfg["teacher"] == str(tmp_path / "lev" / "runs" / "mhcnn-160") and cfg["img_size"] == 112
    assert cfg["crop"] == "none" and cfg["test_frac"] == 0.0 and cfg["model_args"]["norm"] == "group"
    assert any("mhcnn-160" in chain and chain.index("mhcnn-160") < chain.index("distilled-112")
               for chain in levers.CHAINS if "distilled-112" in chain)
    assert levers.run_config("wide-160", args)["model_args"]["widths"] == levers.WIDE["widths"]


def test_ensemble_averages_the_members_probabilities_and_the_table_counts_errors(tmp_path):
    sure_e = [0.0, 0.9, 0.0, 0.0, 0.1]      # sure it is an eosinophil
    unsure_n = [0.0, 0.3, 0.0, 0.0, 0.7]    # leans neutrophil
    for name, p in (("a", sure_e), ("b", unsure_n)):
        for lab in ("raabin", "pbc", "bccd"):
            write_predictions(tmp_path / "eval" / name / lab,
                              [("1.jpg", "Neutrophil", p), ("2.jpg", "Lymphocyte", [0, 0, 1.0, 0, 0])])
    levers.ensemble([tmp_path / "eval" / "a", tmp_path / "eval" / "b"], tmp_path / "eval" / "ens")
    with open(tmp_path / "eval" / "ens" / "raabin" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["predicted"] == "Eosinophil" and float(rows[0]["p_Eosinophil"]) == 0.6
    assert rows[1]["predicted"] == "Lymphocyte"
    levers.table(tmp_path, ["A=a", "B=b", "both=ens"])
    lines = (tmp_path / "levers.md").read_text().splitlines()
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines[2:]}
    assert cells["A"][1:4] == ["0.5000", "0.5000", "1"]  # accuracy, macro-F1 over the true classes, N->E
    assert cells["B"][1:4] == ["1.0000", "1.0000", "0"]
    assert cells["both"][3] == "1"


def test_model_speed_writes_its_table(tmp_path):
    out = tmp_path / "speed.md"
    model = REPO / "src" / "wbcnet" / "assets" / "fast.safetensors"
    assert model_speed.main(["--checkpoint", f"a={model}", "--checkpoint", f"b={model}", "--n", "8",
                             "--out", str(out)]) == 0
    text = out.read_text()
    assert "| a | 112 |" in text and "| b | 112 |" in text and "pictures/s" in text and "1.00x" in text
