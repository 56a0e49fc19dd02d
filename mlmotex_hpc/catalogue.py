"""Step 1: the catalogue of candidate motifs.

A motif is a boolean mask over the N *permutable* atoms of the starting model. The
non-permutable atoms (typically O) follow: one is kept exactly when it lies within
``bond_threshold`` Å of a kept permutable atom. The catalogue depends only on the model,
the config and the seed, never on the number of MPI ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .io.structure import Structure

#: Motifs drawn per vectorised block when sampling. Part of the sampling scheme: changing
#: it changes which motifs a given seed produces.
SAMPLING_BLOCK = 4096


@dataclass(frozen=True, eq=False)
class MotifSpace:
    """How masks over permutable atoms map onto the atoms of the starting model.

    Attributes
    ----------
    permutable : ndarray of int, shape (N,)
        0-based indices (into the model) of the permutable atoms.
    others : ndarray of int
        Indices of the non-permutable atoms.
    bonded : ndarray of bool, shape (N, len(others))
        ``bonded[i, j]``: other atom j lies within the bond threshold of permutable atom i.
    n_atoms : int
        Atoms in the starting model.
    """

    permutable: np.ndarray
    others: np.ndarray
    bonded: np.ndarray
    n_atoms: int

    @classmethod
    def from_structure(
        cls, structure: Structure, permute: tuple[str, ...], bond_threshold: float
    ) -> MotifSpace:
        elements = np.array(structure.elements)
        is_perm = np.isin(elements, permute)
        permutable = np.flatnonzero(is_perm)
        others = np.flatnonzero(~is_perm)
        diff = structure.xyz[permutable, None, :] - structure.xyz[None, others, :]
        bonded = np.einsum("ijk,ijk->ij", diff, diff) <= bond_threshold**2
        return cls(permutable, others, bonded, len(structure))

    @property
    def size(self) -> int:
        """N, the number of permutable atoms."""
        return len(self.permutable)

    def atom_masks(self, masks: np.ndarray) -> np.ndarray:
        """Masks over all model atoms, shape (M, n_atoms), for motif masks (M, N)."""
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        full = np.zeros((len(masks), self.n_atoms), dtype=bool)
        full[:, self.permutable] = masks
        if self.others.size:
            # An O is kept when any kept permutable atom bonds to it.
            full[:, self.others] = (masks.astype(np.uint8) @ self.bonded.astype(np.uint8)) > 0
        return full


def sample_masks(n_permutable: int, size: int, seed: int) -> np.ndarray:
    """Draw distinct motif masks as the original ML-MotEx does.

    For each motif, k is drawn uniformly from 1..N and then k distinct atoms uniformly;
    duplicates are dropped (the first occurrence is kept, so the order is reproducible).
    When ``size`` reaches 2**N - 1, every non-empty subset is enumerated instead.

    Parameters
    ----------
    n_permutable : int
        N, the number of permutable atoms.
    size : int
        Number of distinct motifs wanted.
    seed : int
        Seed of the random generator; the result depends on nothing else.

    Returns
    -------
    ndarray of bool, shape (min(size, 2**N - 1), N)
    """
    n = n_permutable
    if n < 1:
        raise ValueError("need at least one permutable atom")
    if n < 63 and size >= 2**n - 1:
        return enumerate_masks(n)
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    kept: list[np.ndarray] = []
    count = 0
    while count < size:
        k = rng.integers(1, n + 1, size=SAMPLING_BLOCK)
        # The k smallest of N uniform keys are a uniformly random k-subset.
        keys = rng.random((SAMPLING_BLOCK, n))
        rank = np.argsort(np.argsort(keys, axis=1), axis=1)
        block = rank < k[:, None]
        packed = np.packbits(block, axis=1)
        fresh = np.zeros(SAMPLING_BLOCK, dtype=bool)
        for i, row in enumerate(packed):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                fresh[i] = True
        new = block[fresh][: size - count]
        kept.append(new)
        count += len(new)
    return np.concatenate(kept)


def enumerate_masks(n_permutable: int) -> np.ndarray:
    """Every non-empty subset of N atoms, ordered by its binary code 1 .. 2**N - 1 (small N:
    an exhaustive run streams :func:`code_masks` instead)."""
    if n_permutable > 24:
        raise ValueError(f"refusing to enumerate 2^{n_permutable} subsets")
    return code_masks(0, 2**n_permutable - 1, n_permutable)


def code_masks(start: int, stop: int, n_permutable: int) -> np.ndarray:
    """Rows ``start:stop`` of the exhaustive table: row r is the motif whose binary code
    is r + 1 (bit i set: permutable atom i kept), bool (stop - start) × N."""
    return row_masks(np.arange(start, stop, dtype=np.int64), n_permutable)


def row_masks(rows: np.ndarray, n_permutable: int) -> np.ndarray:
    """The motifs of any rows of the exhaustive table (bool, len(rows) × N); row -1 is the
    empty motif."""
    codes = np.asarray(rows, dtype=np.int64) + 1
    bits = np.arange(n_permutable, dtype=np.int64)
    return ((codes[:, None] >> bits[None, :]) & 1).astype(bool)


def mask_rows(masks: np.ndarray) -> np.ndarray:
    """Row of each motif in the exhaustive table (its binary code - 1), int64; -1 for the
    empty motif."""
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    weights = np.left_shift(np.int64(1), np.arange(masks.shape[1], dtype=np.int64))
    return masks.astype(np.int64) @ weights - 1


def read_masks_file(path: Path, n_permutable: int) -> np.ndarray:
    """Read motif masks from a text file of 0/1 rows (one motif per line, N columns).

    Columns may be separated by spaces or commas or written as one string (``0110...``);
    ``#`` starts a comment.
    """
    rows: list[list[bool]] = []
    first_line: dict[bytes, int] = {}
    try:  # utf-8-sig: a byte-order mark (some editors write one) is not part of line 1
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"masks file {path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}): save it as plain ASCII 0/1 lines") from None
    except OSError as exc:
        raise InputError(f"cannot read masks file {path}: {exc.strerror or exc}") from None
    for lineno, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].replace(",", " ").strip()
        if not text:
            continue
        tokens = text.split() if any(c.isspace() for c in text) else list(text)
        if len(tokens) != n_permutable or any(t not in ("0", "1") for t in tokens):
            raise InputError(
                f"masks file {path}, line {lineno}: expected {n_permutable} values of 0 or 1 "
                f"(one per permutable atom), found {text[:60]!r}"
            )
        if "1" not in tokens:
            raise InputError(f"masks file {path}, line {lineno}: a motif needs at least one atom")
        row = [t == "1" for t in tokens]
        key = np.packbits(row).tobytes()
        if key in first_line:  # a repeated motif would sit in the training and test sets
            raise InputError(f"masks file {path}, line {lineno}: the same motif as line "
                             f"{first_line[key]}; every motif must be listed once")
        first_line[key] = lineno
        rows.append(row)
    if not rows:
        raise InputError(f"masks file {path} holds no motif")
    return np.array(rows, dtype=bool)


def build_catalogue(
    space: MotifSpace, size: int, seed: int, masks_file: Path | None = None
) -> np.ndarray:
    """The motif masks of a run, shape (M, N): from ``masks_file`` or sampled."""
    if masks_file is not None:
        return read_masks_file(masks_file, space.size)
    return sample_masks(space.size, size, seed)
