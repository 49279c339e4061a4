"""wbcnet.cells.stain: cells of three labs' stains redrawn in one reference nucleus stain.

Real cells: Raabin-WBC from the bundled sample (magenta nuclei), PBC and BCCD crops under
tests/data/framings (violet nuclei; BCCD's pale and blurred).
"""
import numpy as np
import pytest

from test_locate import framing_paths
from wbcnet.models import checkpoint as ckpt
from wbcnet.cells.preprocess import Preprocess, load_input
from wbcnet.cells.stain import REF_NUCLEUS, measure, normalize_stain
from wbcnet.core.errors import WbcnetError


def nucleus_od(rgb: np.ndarray) -> np.ndarray:
    return measure(rgb)[2]


def angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def lab_nuclei(stain: str) -> dict[str, np.ndarray]:
    """Each lab's median nucleus OD over its sample cells, cropped to the cell."""
    prep = Preprocess(size=112, crop="cell", stain=stain)
    return {lab: np.median([nucleus_od(load_input(p, prep)[0]) for p in framing_paths(lab)], axis=0)
            for lab in ("raabin", "pbc", "bccd")}


def test_three_labs_nuclei_meet_in_one_colour_and_density():
    before, after = lab_nuclei("none"), lab_nuclei("nucleus")
    labs = list(before)
    spread = lambda d: max(angle(d[a], d[b]) for a in labs for b in labs)  # noqa: E731
    assert spread(before) > 8          # magenta against violet: the gap the model must not learn
    assert spread(after) < spread(before) / 3
    for lab in labs:                   # each near the reference, in hue and in density (BCCD's is 1/3)
        assert angle(after[lab], REF_NUCLEUS) < 5, lab
        assert 0.7 < np.linalg.norm(after[lab]) / np.linalg.norm(REF_NUCLEUS) < 1.3, lab
    assert np.linalg.norm(before["bccd"]) < 0.6 * np.linalg.norm(REF_NUCLEUS)


def test_a_restained_copy_lands_on_the_same_picture():
    """The same cell stained violet and paler: after normalisation the two pictures nearly agree."""
    rgb = load_input(framing_paths("raabin")[0], Preprocess(size=112, crop="cell"))[0]
    px = rgb.reshape(-1, 3).astype(np.float64)
    od = -np.log((px + 1) / 256)
    mix = np.array([[1.0, 0.35, 0.0], [0.0, 0.9, 0.0], [0.0, 0.1, 1.0]])  # green-absorbing stain also takes red
    other = (256 * np.exp(-0.6 * od @ mix.T) - 1).clip(0, 255).round().astype(np.uint8).reshape(rgb.shape)
    diff = lambda a, b: float(np.abs(a.astype(int) - b.astype(int)).mean())  # noqa: E731
    assert diff(rgb, other) > 20
    assert diff(normalize_stain(rgb), normalize_stain(other)) < diff(rgb, other) / 3


def test_pictures_without_stain_are_left_alone_and_bad_names_refused():
    blank = np.full((64, 64, 3), 200, np.uint8)
    assert np.array_equal(normalize_stain(blank), blank)
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(normalize_stain(rgb, "none"), rgb)
    with pytest.raises(WbcnetError, match="stain: 'macenko' is not one of none, nucleus"):
        Preprocess(size=112, stain="macenko")


def test_the_checkpoint_carries_the_stain_to_every_decode(tmp_path):
    """A checkpoint that asks for the stain gets it (and the decode cache keeps the two apart)."""
    from wbcnet.data.cache import decode_images
    from wbcnet.cells.preprocess import from_meta

    plain, stained = Preprocess(112, "cell"), Preprocess(112, "cell", stain="nucleus")
    assert plain.key() != stained.key() and "stain" not in plain.to_dict()
    meta = ckpt.new_meta(["a", "b"], "mhcnn", {}, 112, [0.5] * 3, [0.2] * 3, preprocess=stained.to_dict())
    path = framing_paths("pbc")[0]
    got = decode_images([path], from_meta(meta), progress=False).images[0].transpose(1, 2, 0)  # stored C x H x W
    assert np.array_equal(got, normalize_stain(load_input(path, plain)[0]))
    assert not np.array_equal(got, load_input(path, plain)[0])
