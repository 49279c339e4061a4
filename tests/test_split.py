from collections import Counter

from wbcnet.data.scan import Sample, default_group
from wbcnet.data.split import grouped_split, read_split, write_split


def make_samples(n_groups=300, seed=0):
    import random

    rng = random.Random(seed)
    samples = []
    for g in range(n_groups):
        label = rng.choice([0, 0, 0, 1, 1, 2, 3, 4])
        for k in range(rng.randint(1, 4)):
            samples.append(Sample(f"/x/{label}/95-1-{g}_{g}_{k}.jpg", label, f"95-1-{g}_{g}"))
    return samples


def test_default_group_drops_the_cell_number():
    assert default_group("a/95-5-10-1_1001_3.jpg") == "95-5-10-1_1001"
    assert default_group("20190526_162951_0.jpg") == "20190526_162951"
    assert default_group("plain.png") == "plain"


def test_no_group_in_two_splits_and_fractions_hold():
    samples = make_samples()
    split = grouped_split(samples, 0.15, 0.15, seed=1)
    owner = {}
    for name, items in split.items():
        for s in items:
            assert owner.setdefault(s.group, name) == name, f"group {s.group} in {owner[s.group]} and {name}"
    assert sum(len(v) for v in split.values()) == len(samples)
    for name, frac in (("val", 0.15), ("test", 0.15)):
        assert abs(len(split[name]) / len(samples) - frac) < 0.05
        assert set(Counter(s.label for s in split[name])) == {0, 1, 2, 3, 4}  # stratified: every class


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    samples = make_samples()
    a = grouped_split(samples, 0.2, 0.2, seed=3)
    b = grouped_split(samples, 0.2, 0.2, seed=3)
    c = grouped_split(samples, 0.2, 0.2, seed=4)
    assert a == b and a != c


def test_split_csv_round_trip(tmp_path):
    classes = ["A", "B", "C", "D", "E"]
    split = grouped_split(make_samples(), 0.15, 0.15, seed=0)
    write_split(tmp_path / "split.csv", split, classes)
    assert read_split(tmp_path / "split.csv", classes) == split


def test_linked_groups_are_merged_and_split_together():
    from wbcnet.data.split import merge_linked_groups

    samples = make_samples(200)
    a, b = samples[0], samples[-1]
    assert a.group != b.group
    merged = merge_linked_groups(samples, [(a.path, b.path), ("/not/there.jpg", a.path)])
    groups = {s.path: s.group for s in merged}
    assert groups[a.path] == groups[b.path]
    assert len({s.group for s in merged}) == len({s.group for s in samples}) - 1
    split = grouped_split(merged, 0.3, 0.3, seed=0)
    side = {s.path: name for name, items in split.items() for s in items}
    assert side[a.path] == side[b.path]
