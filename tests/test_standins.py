"""benchmarks/standins.py: the degraded copies that stand in for labs we don't have (issue 28)."""
import numpy as np
from PIL import Image

from benchmarks import standins
from benchmarks.lolo import fold_config

FRAMINGS = __import__("pathlib").Path(__file__).parent / "data" / "framings" / "bccd"


def test_each_kind_degrades_as_it_says(tmp_path):
    folders = standins.make(FRAMINGS, tmp_path, n=100, seed=0)
    assert list(folders) == list(standins.KINDS)
    names = {k: sorted(p.relative_to(f) for p in f.rglob("*.png")) for k, f in folders.items()}
    assert all(v == names["clean"] for v in names.values()) and len(names["clean"]) == 10  # the same cells
    clean = np.asarray(Image.open(folders["clean"] / names["clean"][0]), dtype=np.float32)
    pale = np.asarray(Image.open(folders["blur + pale"] / names["clean"][0]), dtype=np.float32)
    yellow = np.asarray(Image.open(folders["yellow cast"] / names["clean"][0]), dtype=np.float32)
    low = Image.open(folders["low-res camera"] / names["clean"][0])
    assert pale.shape == clean.shape and pale.std() < 0.5 * clean.std()          # soft and pale
    blue_over_red = lambda a: standins.background(a)[2] / standins.background(a)[0]
    assert max(yellow.shape[:2]) == 120 and blue_over_red(yellow) < 0.85 * blue_over_red(clean)  # tight, yellow ground
    assert low.size[0] <= clean.shape[1] // 3 + 1                                 # a third of the pixels


def test_a_draw_repeats_and_a_finished_kind_is_kept(tmp_path):
    a = standins.draw(FRAMINGS, 6, seed=3)
    assert a == standins.draw(FRAMINGS, 6, seed=3) and len(a) == 10  # at least 10 a class where it has them
    folders = standins.make(FRAMINGS, tmp_path, n=6, kinds=("clean",))
    before = sorted(folders["clean"].rglob("*.png"))
    before[0].unlink()  # a finished kind is not made again
    standins.make(FRAMINGS, tmp_path, n=6, kinds=("clean",))
    assert len(sorted(folders["clean"].rglob("*.png"))) == len(before) - 1


def test_a_fold_leaves_its_lab_out_of_the_recipe():
    recipe = {"data": {"raabin": "a", "pbc": "b", "bccd": "c"}, "epochs": 18, "augment": {"pale": 0.2}}
    cfg = fold_config(recipe, "pbc", None)
    assert cfg["data"] == {"raabin": "a", "bccd": "c"} and cfg["epochs"] == 18 and cfg["augment"] == {"pale": 0.2}
    assert recipe["data"] == {"raabin": "a", "pbc": "b", "bccd": "c"}  # the recipe itself untouched
    assert fold_config(recipe, None, 3)["data"] == recipe["data"] and fold_config(recipe, None, 3)["epochs"] == 3
