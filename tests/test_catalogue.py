"""Step 1: sampling, pruning of non-permutable atoms, exhaustive enumeration, masks files."""

import numpy as np
import pytest

from mlmotex_hpc.catalogue import (
    MotifSpace,
    build_catalogue,
    enumerate_masks,
    read_masks_file,
    sample_masks,
)
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.structure import read_xyz

from .conftest import KEGGIN_XYZ


def test_sampling_is_deterministic_and_distinct():
    a = sample_masks(24, 3000, seed=7)
    b = sample_masks(24, 3000, seed=7)
    c = sample_masks(24, 3000, seed=8)
    assert a.shape == (3000, 24) and a.dtype == bool
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(np.packbits(a, axis=1), axis=0)) == 3000
    assert a.sum(axis=1).min() >= 1


def test_sampling_draws_sizes_uniformly():
    masks = sample_masks(24, 20000, seed=0)
    counts = np.bincount(masks.sum(axis=1), minlength=25)[1:]
    # k is uniform on 1..24 but duplicates are dropped: only 24 one-atom motifs exist.
    assert counts[0] == 24
    # Large k saturate too (C(24, 23) = 24); in between every k is drawn equally often
    # (about 1050 times each here, Poisson noise about 3 %).
    middle = counts[4:19]
    assert middle.max() / middle.min() < 1.15
    assert counts[0] == 24 and counts[-1] == 1


def test_prefix_is_stable_when_size_grows():
    small = sample_masks(30, 500, seed=3)
    large = sample_masks(30, 9000, seed=3)
    np.testing.assert_array_equal(small, large[:500])


def test_exhaustive_when_size_reaches_all_subsets():
    masks = sample_masks(5, 31, seed=0)
    assert masks.shape == (31, 5)
    assert len({m.tobytes() for m in masks}) == 31
    np.testing.assert_array_equal(sample_masks(5, 10**6, seed=9), enumerate_masks(5))


def test_bonded_oxygens_follow_their_tungsten():
    structure = read_xyz(KEGGIN_XYZ)
    space = MotifSpace.from_structure(structure, ("W",), 2.6)
    assert space.size == 24 and len(space.others) == 80
    motif = np.zeros(24, bool)
    motif[list(range(0, 24, 2))] = True
    atoms = space.atom_masks(motif)[0]
    assert atoms[space.permutable].sum() == 12
    # The α-Keggin W12O40: 40 O within 2.6 Å of its 12 W.
    assert atoms[space.others].sum() == 40
    # Every kept O really lies within 2.6 Å of a kept W, every dropped O does not.
    kept_w = structure.xyz[space.permutable[motif]]
    for o in space.others:
        near = np.min(np.linalg.norm(kept_w - structure.xyz[o], axis=1)) <= 2.6
        assert atoms[o] == near


def test_masks_file(tmp_path):
    path = tmp_path / "masks.txt"
    path.write_text("# two motifs\n1 0 1\n0,1,1\n111\n")
    masks = read_masks_file(path, 3)
    np.testing.assert_array_equal(masks, [[1, 0, 1], [0, 1, 1], [1, 1, 1]])
    space = MotifSpace(np.arange(3), np.array([], int), np.zeros((3, 0), bool), 3)
    np.testing.assert_array_equal(build_catalogue(space, 99, 0, path), masks)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("1 0\n", "line 1"),
        ("1 0 2\n", "line 1"),
        ("1 1 1\n0 0 0\n", "line 2"),
        ("# empty\n", "no motif"),
    ],
)
def test_masks_file_errors(tmp_path, text, problem):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=problem):
        read_masks_file(path, 3)
