"""wbcnet.models.shift: the unfamiliar-image score, checked against its definition."""
import numpy as np

from wbcnet.models.shift import fit_shift


def test_score_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 6))
    labels = np.repeat(np.arange(3), 200)
    train = centres[labels] + rng.normal(size=(600, 6))
    stats = fit_shift(train, labels, centres[np.arange(90) % 3] + rng.normal(size=(90, 6)))
    cells = np.vstack([centres + 0.1, rng.normal(30, 1, (4, 6))])  # three near a class, four far from all
    direct = np.array([min(float((x - mu) @ stats.precision @ (x - mu)) for mu in stats.means) for x in cells])
    np.testing.assert_allclose(stats.score(cells), direct, rtol=1e-9, atol=1e-9)
    assert (stats.score(cells[:3]) < stats.threshold).all() and (stats.score(cells[3:]) > stats.threshold).all()
