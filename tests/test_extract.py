"""The extract stage's pure parts: labels, links, pieces, moves, dangling atoms, polishing."""

from __future__ import annotations

import numpy as np
import pytest

from mlmotex_hpc.catalogue import MotifSpace
from mlmotex_hpc.extract import (
    LABEL_CODES,
    Descent,
    Polisher,
    best_of,
    confidence_labels,
    dangling,
    is_connected,
    link_graph,
    pieces,
    swaps,
    toggles,
)
from mlmotex_hpc.io.structure import read_xyz

from .conftest import KEGGIN_MOTIF_W, KEGGIN_XYZ

IN, OUT, UNSURE = LABEL_CODES["in"], LABEL_CODES["out"], LABEL_CODES["uncertain"]


def test_labels_need_the_acv_to_clear_z_standard_errors():
    acv = np.array([-0.05, -0.01, 0.0, 0.01, 0.05, -0.05])
    se = np.array([0.01, 0.01, 0.01, 0.01, 0.01, np.nan])
    cf = np.array([5.0, 5.0, 5.0, 5.0, 0.5, 5.0])
    labels = confidence_labels(acv, se, cf, z=2.0)
    np.testing.assert_array_equal(labels, [IN, UNSURE, UNSURE, UNSURE, OUT, IN])
    # a confidence-factor floor makes the weak-CF atom uncertain
    assert confidence_labels(acv, se, cf, z=2.0, min_cf=1.0)[4] == UNSURE
    # z = 0: the sign alone
    np.testing.assert_array_equal(confidence_labels(acv, se, cf, z=0.0),
                                  [IN, IN, UNSURE, OUT, OUT, IN])


def _chain(n: int) -> np.ndarray:
    """Links of atoms 0-1-2-...-(n-1) in a line."""
    links = np.zeros((n, n), dtype=bool)
    for i in range(n - 1):
        links[i, i + 1] = links[i + 1, i] = True
    return links


def test_links_through_a_shared_bonded_atom_or_distance():
    # three metals: 0 and 1 share oxygen 0; 2 is alone but 1.0 Å from 1
    bonded = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    xyz = np.array([[0.0, 0, 0], [3.0, 0, 0], [4.0, 0, 0]])
    links = link_graph(bonded, xyz, link_distance=1.5)
    assert links[0, 1] and links[1, 0] and links[1, 2] and not links[0, 2]
    assert not links.diagonal().any()
    assert not link_graph(bonded, xyz, link_distance=0.5)[1, 2]


def test_pieces_largest_first_and_connectivity():
    links = _chain(6)
    mask = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    found = pieces(mask, links)
    assert [p.tolist() for p in found] == [[3, 4, 5], [0, 1]]
    assert not is_connected(mask, links)
    assert is_connected(np.array([0, 1, 1, 1, 0, 0], dtype=bool), links)
    assert not is_connected(np.zeros(6, dtype=bool), links)


def test_toggles_keep_a_motif_connected():
    links = _chain(5)
    mask = np.array([0, 1, 1, 1, 0], dtype=bool)
    moves = {m for _, m in toggles(mask, links)}
    # add the ends' neighbours 0 and 4; remove 1 or 3, never the middle atom 2
    assert moves == {((0,), ()), ((4,), ()), ((), (1,)), ((), (3,))}
    # unconstrained: every toggle
    assert len(toggles(mask, None)) == 5
    # a single atom is never removed (no empty motif)
    single = np.array([0, 0, 1, 0, 0], dtype=bool)
    assert all(new.any() for new, _ in toggles(single, None))


def test_swaps_slide_an_atom_along_the_motif():
    links = _chain(5)
    mask = np.array([0, 1, 1, 0, 0], dtype=bool)
    moved = {m for _, m in swaps(mask, links)}
    # 1 -> 3 and 2 -> 0 keep the motif in one piece; 1 -> 0 leaves 0 and 2 apart
    assert moved == {((3,), (1,)), ((0,), (2,))}
    for new, _ in swaps(mask, links):
        assert new.sum() == 2 and is_connected(new, links)


def test_dangling_counts_oxygens_that_lost_a_partner_on_keggin():
    structure = read_xyz(KEGGIN_XYZ)
    space = MotifSpace.from_structure(structure, ("W",), 2.6)
    cage = np.zeros(24, dtype=bool)
    cage[list(KEGGIN_MOTIF_W)] = True  # the known α-Keggin cage: every O keeps all its W
    assert dangling(cage, space.bonded)[0] == 0
    broken = cage.copy()
    broken[4] = False
    n_broken = dangling(broken, space.bonded)[0]
    # the O bridging W4 to its kept neighbours now dangle (terminal O go with W4)
    bridging = (space.bonded[4] & space.bonded[cage & (np.arange(24) != 4)].any(axis=0)).sum()
    assert n_broken == bridging > 0


def _additive_game(weights: np.ndarray, frames: int = 1):
    """evaluate() of a game Rw(S) = 0.5 + sum of the weights of S, counting calls."""
    calls = {"masks": 0}

    def evaluate(masks):
        calls["masks"] += len(masks)
        rw = 0.5 + masks.astype(float) @ weights
        return np.tile(rw, (frames, 1))

    return evaluate, calls


def test_polisher_finds_the_optimum_of_an_additive_game():
    rng = np.random.default_rng(1)
    weights = rng.normal(0, 0.01, 10)
    evaluate, _ = _additive_game(weights)
    start = np.zeros(10, dtype=bool)
    start[0] = True
    d = Descent(0, "extracted", start, float(evaluate(start[None])[0, 0]))
    Polisher(None, tolerance=0.0, use_swaps=False).run([d], evaluate)
    best = weights < 0
    if not best.any():  # the empty motif is never allowed
        best[np.argmin(weights)] = True
    np.testing.assert_array_equal(d.mask, best)
    assert d.stop == "local optimum"
    assert d.path[0]["rw"] > d.path[-1]["rw"]


def test_polisher_tolerance_and_penalty_hold_it_back():
    weights = np.array([-0.05, -0.001, 0.02])
    evaluate, _ = _additive_game(weights)
    start = np.array([1, 0, 0], dtype=bool)
    d = Descent(0, "extracted", start.copy(), float(evaluate(start[None])[0, 0]))
    Polisher(None, tolerance=0.002, use_swaps=False).run([d], evaluate)
    np.testing.assert_array_equal(d.mask, start)  # adding atom 1 gains less than 0.002
    # a penalty on atom 0 larger than its gain moves the answer
    d = Descent(0, "extracted", start.copy(), float(evaluate(start[None])[0, 0]))
    Polisher(None, tolerance=0.0, use_swaps=False,
             penalty=lambda m: 0.1 * m[:, 0]).run([d], evaluate)
    np.testing.assert_array_equal(d.mask, [0, 1, 0])


def test_polisher_stops_when_the_budget_is_spent_and_merges_starts():
    weights = np.array([-0.01, -0.01, -0.01, -0.01])

    def evaluate(masks):  # the budget reaches two motifs only
        rw = 0.5 + masks.astype(float) @ weights
        rw[2:] = np.nan
        return rw[None, :]

    start = np.array([1, 0, 0, 0], dtype=bool)
    d = Descent(0, "extracted", start, 0.49)
    Polisher(None, tolerance=0.0).run([d], evaluate)
    assert d.stop == "fit budget spent"
    # two starts of one frame reaching the same motif: the later ends there
    evaluate, _ = _additive_game(weights)
    a = Descent(0, "extracted", np.array([1, 1, 1, 0], dtype=bool), 0.47)
    b = Descent(0, "catalogue #1", np.array([1, 1, 0, 1], dtype=bool), 0.47)
    Polisher(None, tolerance=0.0, use_swaps=False).run([a, b], evaluate)
    assert a.mask.all() and b.mask.all()
    assert b.stop == "joined the extracted start"
    assert best_of([a, b], 0) is a


def test_the_answer_is_the_extracted_start_unless_asked_for_the_lowest():
    from mlmotex_hpc.pipeline.extract import answer_of

    a = Descent(0, "extracted", np.array([1, 1, 0], dtype=bool), 0.30, score=0.30)
    b = Descent(0, "catalogue #1", np.array([0, 1, 1], dtype=bool), 0.25, score=0.25)
    c = Descent(1, "catalogue #1", np.array([1, 0, 0], dtype=bool), 0.40, score=0.40)
    assert answer_of([a, b, c], 0, "extracted") is a
    assert answer_of([a, b, c], 0, "lowest") is b
    assert answer_of([a, b, c], 1, "extracted") is c  # no ACV < 0 start in frame 1


def test_polisher_frames_move_independently():
    weights = np.array([-0.02, 0.02, 0.01])

    def evaluate(masks):  # frame 1 sees the opposite game
        rw = 0.5 + masks.astype(float) @ weights
        return np.stack([rw, 1.0 - rw])

    starts = [Descent(f, "extracted", np.array([0, 0, 1], dtype=bool),
                      float(evaluate(np.array([[0, 0, 1]]))[f, 0])) for f in (0, 1)]
    Polisher(None, tolerance=0.0, use_swaps=False).run(starts, evaluate)
    np.testing.assert_array_equal(starts[0].mask, [1, 0, 0])
    np.testing.assert_array_equal(starts[1].mask, [0, 1, 1])


@pytest.mark.parametrize("n", [6, 9])
def test_polisher_ends_at_a_connected_local_optimum(n):
    """On a ring of n atoms with a random pairwise game, the connected descent ends at a
    connected motif that no allowed toggle improves (checked against every one)."""
    rng = np.random.default_rng(7)
    links = np.zeros((n, n), dtype=bool)
    for i in range(n):
        links[i, (i + 1) % n] = links[(i + 1) % n, i] = True
    pair = rng.normal(0, 0.01, (n, n))
    pair = (pair + pair.T) / 2

    def evaluate(masks):
        m = masks.astype(float)
        return (0.5 + np.einsum("ki,ij,kj->k", m, pair, m))[None, :]

    start = np.zeros(n, dtype=bool)
    start[0] = True
    d = Descent(0, "extracted", start, float(evaluate(start[None])[0, 0]))
    Polisher(links, tolerance=0.0, use_swaps=False).run([d], evaluate)
    assert is_connected(d.mask, links)
    for new, _ in toggles(d.mask, links):
        assert evaluate(new[None])[0, 0] >= d.rw
    # and it is no worse than the best connected motif that contains the start's atom
    # and is one move from the start (the first step took the best of those)
    first = [new for new, _ in toggles(start, links)]
    assert d.rw <= min(evaluate(np.array(first))[0])
