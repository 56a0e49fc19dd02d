"""Tables of fits made elsewhere (``fits:``): the reader, its refusals, and the CLI on a
bad table (issue 27, the hostile sweep).

A run on a table that comes back from steps 3-4 is tested in test_inputs_files.py
(``test_fits_table_reproduces_the_run_that_made_it``, ``test_dry_run_of_a_fits_table_config``).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mlmotex_hpc.config import parse_config
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.fitstable import read_fits_table, write_fits_table
from mlmotex_hpc.io.structure import read_xyz, site_labels
from mlmotex_hpc.pipeline.inputs import load_inputs

from .conftest import KEGGIN_XYZ, keggin_config, run_cli

#: Five permutable atoms of a model that interleaves them with O (W1 O2 W3 O4 ...).
LABELS = ["W1", "W3", "W5", "W7", "W9"]


def _rows(seed: int = 3, n_rows: int = 30, n: int = 5):
    rng = np.random.default_rng(seed)
    masks = rng.random((n_rows, n)) < 0.5
    masks[~masks.any(axis=1), 0] = True  # no empty motif
    return np.arange(n_rows) + 7, rng.random(n_rows).tolist(), masks


def _bits(mask, sep=","):
    return sep.join(str(int(b)) for b in mask)


def _write(tmp_path, text: str, name: str = "t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(path, *fragments, labels=LABELS, sites=None):
    with pytest.raises(InputError) as err:
        read_fits_table(path, labels, sites)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- formats that must agree -----------------------------------------------------------------

def _formats(tmp_path, ids, rw, masks):
    rows = list(zip(ids, rw, masks, strict=True))
    order = [4, 2, 0, 3, 1]  # a shuffled header
    yield write_fits_table(tmp_path / "plain.txt", ids, rw, masks)
    yield _write(tmp_path, "\n".join(f"{i} {r!r} {_bits(m, ' ')}" for i, r, m in rows),
                 "short.txt")  # ID, Rw, bits (no atom count)
    yield _write(tmp_path, "ID,Rw,size," + ",".join(LABELS) + "\n" + "\n".join(
        f"{i},{r!r},{m.sum()},{_bits(m)}" for i, r, m in rows), "ordered.csv")
    yield _write(tmp_path, "ID,Rw," + ",".join(LABELS[::-1]) + "\n" + "\n".join(
        f"{i},{r!r},{_bits(m[::-1])}" for i, r, m in rows), "reversed.csv")
    yield _write(tmp_path, "\t".join(["Rw (fit)", *(LABELS[k] for k in order), "id"]) + "\n"
                 + "\n".join(f"{r!r}\t{_bits(m[order], chr(9))}\t{i}" for i, r, m in rows),
                 "shuffled.tsv")
    yield _write(tmp_path, "id;rw;mask\n" + "\n".join(
        f"{i};{r!r};{_bits(m, '')}" for i, r, m in rows), "semicolon.csv")
    yield _write(tmp_path, "id rw " + " ".join(LABELS) + "\n" + "\n".join(
        f"{i} {r!r} {_bits(m, ' ')}" for i, r, m in rows), "spaces.txt")
    # quoted fields, a mask with spaces in it, trailing commas, CRLF and a BOM
    quoted = tmp_path / "quoted.csv"
    quoted.write_bytes(("\ufeff\"id\",\"rw\",\"mask\",\r\n" + "".join(
        f"\"{i}\",\"{r!r}\",\" {_bits(m, ' ')} \",\r\n" for i, r, m in rows)).encode("utf-8"))
    yield quoted


def test_fits_table_formats_agree(tmp_path):
    ids, rw, masks = _rows()
    for path in _formats(tmp_path, ids, rw, masks):
        table = read_fits_table(path, LABELS)
        assert np.array_equal(table.rw, np.array(rw)), path.name
        assert np.array_equal(table.masks, masks), path.name
        assert np.array_equal(table.ids, ids), path.name
    mask_only = _write(tmp_path, "rw (fit),mask\n" + "\n".join(
        f"{r!r},{_bits(m, '')}" for r, m in zip(rw, masks, strict=True)))
    table = read_fits_table(mask_only, LABELS)
    assert np.array_equal(table.masks, masks) and np.array_equal(table.ids, np.arange(30))


def test_fits_table_named_columns_of_the_keggin_model_are_read_by_name(tmp_path):
    """The issue's case: ``id,rw,W24,...,W1`` is the model's own labels reversed; read by
    position it gave W2 W4 ... W24 for W1 W3 ... W23."""
    structure = read_xyz(KEGGIN_XYZ)
    labels = [lab for lab, el in zip(site_labels(structure.elements), structure.elements,
                                     strict=True) if el == "W"]
    assert labels == [f"W{k}" for k in range(1, 25)]
    ids, rw, masks = _rows(5, 40, 24)
    masks[0] = np.arange(24) % 2 == 0  # W1 W3 ... W23
    header = ",".join(labels[::-1])
    reversed_ = _write(tmp_path, f"id,rw,{header}\n" + "\n".join(
        f"{i},{r!r},{_bits(m[::-1])}" for i, r, m in zip(ids, rw, masks, strict=True)))
    table = read_fits_table(reversed_, labels)
    assert np.array_equal(table.masks, masks)
    assert [labels[k] for k in np.flatnonzero(table.masks[0])] == [f"W{k}" for k in
                                                                   range(1, 24, 2)]


def test_fits_table_crystal_site_labels_name_columns_only_where_unique(tmp_path):
    ids, rw, masks = _rows()
    sites = ["Wa", "Wb", "Wc", "Wd", "We"]
    path = _write(tmp_path, "id,rw," + ",".join(sites[::-1]) + "\n" + "\n".join(
        f"{i},{r!r},{_bits(m[::-1])}" for i, r, m in zip(ids, rw, masks, strict=True)))
    assert np.array_equal(read_fits_table(path, LABELS, sites).masks, masks)
    _refused(path, "'We'", "not a permutable atom", "W1, W3, W5, W7", "'mask'")  # no sites
    # sites that repeat (one crystal site, many atoms) name nothing
    _refused(path, "'We'", "not a permutable atom", sites=["Wa", "Wb", "Wc", "Wd", "Wa"])
    # sites that are the model's labels of other atoms: which is meant?
    _refused(_write(tmp_path, "id,rw," + ",".join(LABELS) + "\n1,0.5,1,0,0,0,0\n", "a.csv"),
             "ambiguous", "'mask'", sites=LABELS[::-1])


# -- named columns that are refused ----------------------------------------------------------

@pytest.mark.parametrize("names, fragments", [
    # the old positional names: not the model's atoms
    ("W0,W1,W2,W3,W4", ["column 3, 'W0'", "not a permutable atom",
                        "W1, W3, W5, W7, ... (5 in all)", "'mask' column"]),
    ("W1,W3,W5,W7,O2", ["column 7, 'O2'", "not a permutable atom"]),
    ("W1,W3,W5,W7,W9,W11", ["'W11'", "not a permutable atom"]),           # an extra column
    ("W1,W3,W5,W7,W9,note", ["'note'", "not a permutable atom"]),
    ("W1,W3,W5,W7", ["no column for the permutable atom W9"]),             # a missing atom
    ("W1,W3,W5,W7,W7", ["'W7' twice", "columns 6 and 7"]),                 # a duplicate
    ("0,1,2,3,4", ["named by numbers (0, 1, 2, ...)", "not clear", "W1, W3"]),
    ("1,2,3,4,5", ["named by numbers", "not clear"]),
    ("mask,W1", ["'W1'", "beside a 'mask' column"]),
    ("rwp,W1,W3,W5,W7,W9", ["two columns of an Rw", "'rw' and 'rwp'"]),
])
def test_fits_table_named_columns_must_be_the_permutable_atoms(tmp_path, names, fragments):
    n_cols = len(names.split(","))
    path = _write(tmp_path, f"id,rw,{names}\n1,0.5," + ",".join(["1"] * n_cols) + "\n")
    _refused(path, *fragments)


@pytest.mark.parametrize("text, fragments", [
    ("id,size,mask\n1,1,10000\n", ["line 1", "no Rw column"]),
    ("id,rw\n1,0.5\n", ["no mask in its header", "W1, W3"]),
    (",rw,mask\n1,0.5,10000\n", ["line 1", "header's field 1 is empty"]),
    ("id,rw,mask\n", ["a header and no rows"]),
    ("# only a comment\n\n", ["no rows"]),
    ("", ["no rows"]),
])
def test_fits_table_headers_that_are_refused(tmp_path, text, fragments):
    _refused(_write(tmp_path, text), *fragments)


# -- rows that are refused, naming the line --------------------------------------------------

PLAIN_FIRST = "0 0.4 5 1 1 1 1 1\n"      # ID, Rw, number of atoms, 5 bits
SHORT_FIRST = "0 0.4 1 1 1 1 1\n"        # ID, Rw, 5 bits


@pytest.mark.parametrize("first, row, fragments", [
    (PLAIN_FIRST, "1 0.5 3 1 0 1 1", ["line 2", "7 columns", "first row (line 1) has 8"]),
    (SHORT_FIRST, "1 0.5 3 1 0 1 1 0", ["line 2", "8 columns", "first row (line 1) has 7"]),
    (PLAIN_FIRST, "1 0.5 3 1 0 1 1 1", ["line 2", "number of atoms is 3",
                                        "4 of the row's mask bits"]),
    (PLAIN_FIRST, "1 0.5 2.5 1 0 1 0 0", ["line 2", "number of atoms must be an integer"]),
    (SHORT_FIRST, "1 0.5 1 0 2 1 0", ["line 2", "0 or 1", "'2'"]),
    (SHORT_FIRST, "1 -0.5 1 0 1 1 0", ["line 2", "non-negative"]),
    (SHORT_FIRST, "1 inf 1 0 1 1 0", ["line 2", "non-negative"]),
    (SHORT_FIRST, "1 0.5 0 0 0 0 0", ["line 2", "no atom", "empty motif"]),
    (SHORT_FIRST, "1 bad 1 0 1 1 0", ["line 2", "Rw must be a number", "'bad'"]),
    (SHORT_FIRST, "nan 0.5 1 0 1 1 0", ["line 2", "ID must be an integer", "'nan'"]),
    (SHORT_FIRST, "inf 0.5 1 0 1 1 0", ["line 2", "ID must be an integer", "'inf'"]),
    (SHORT_FIRST, "3.5 0.5 1 0 1 1 0", ["line 2", "ID must be an integer", "'3.5'"]),
    (SHORT_FIRST, "1e30 0.5 1 0 1 1 0", ["line 2", "ID '1e30' is out of range"]),
    (SHORT_FIRST, "9223372036854775808 0.5 1 0 1 1 0", ["line 2", "out of range"]),
    (SHORT_FIRST, "0 0.5 1 0 1 1 0", ["line 2", "ID 0 is also the ID of line 1"]),
    (SHORT_FIRST, "1 0.5 1 0 1 1", ["line 2", "6 columns"]),
])
def test_fits_table_rows_that_are_refused_name_the_line(tmp_path, first, row, fragments):
    _refused(_write(tmp_path, first + row + "\n", "t.txt"), *fragments)


def test_fits_table_row_missing_its_last_bit_is_not_reread(tmp_path):
    """The issue's case: an ML-MotEx row (with its atom count) that lost its last bit was
    re-read as ID, Rw, bits, the atom count taken for the first bit."""
    ids, rw, masks = _rows()
    path = write_fits_table(tmp_path / "fits.txt", ids, rw, masks)
    lines = path.read_text().splitlines()
    lines[6] = lines[6].rsplit(" ", 1)[0]  # the 6th row (line 7; line 1 is a comment)
    path.write_text("\n".join(lines) + "\n")
    _refused(path, "line 7", "7 columns", "first row (line 2) has 8")


@pytest.mark.parametrize("row, fragments", [
    ("1,0.5,1,", ["line 3", "field 4 ('mask') is empty"]),        # an empty mask string
    ("1,0.5,1,\"  \"", ["line 3", "field 4 ('mask') is empty"]),
    ("1,0.5,1,1000", ["line 3", "the mask has 4 digits", "N = 5"]),  # a leading 0 lost
    ("1,0.5,1,10x00", ["line 3", "0 or 1", "'x'"]),
    ("1,0.5,2,10000", ["line 3", "number of atoms is 2", "1 of the row's mask bits"]),
    ("1,,1,10000", ["line 3", "field 2 ('rw') is empty"]),
    ("1,0.5,1,10000,,", ["line 3", "row's field 5 is empty"]),
    ("1,0.5,1,10000,9", ["line 3", "5 columns, the header has 4"]),
    ("2,0.5,1,10000", ["line 3", "ID 2 is also the ID of line 2"]),
    ("3,0.5,0,00000", ["line 3", "empty motif"]),
])
def test_fits_table_csv_rows_that_are_refused_name_the_line(tmp_path, row, fragments):
    _refused(_write(tmp_path, f"id,rw,size,mask\n2,0.4,5,11111\n{row}\n"), *fragments)


def test_fits_table_accepts_failed_fits_integral_ids_and_repeated_motifs(tmp_path):
    """Rw nan is a failed fit; ``12.0`` and ``1e3`` are integer IDs; the same motif on two
    rows (two fits of it) is allowed, so 2^N + 1 rows over N = 3 atoms are read."""
    rows = ["12.0 nan 1 0 0", "1e3 0.5 1 0 0"]
    rows += [f"{-k} {k / 10} " + " ".join(f"{(k >> b) & 1}" for b in range(3))
             for k in range(1, 8)]
    assert len(rows) == 2**3 + 1
    table = read_fits_table(_write(tmp_path, "\n".join(rows) + "\n", "t.txt"),
                            ["W1", "W2", "W3"])
    assert table.ids.tolist() == [12, 1000, -1, -2, -3, -4, -5, -6, -7]
    assert np.isnan(table.rw[0]) and np.array_equal(table.masks[0], table.masks[1])
    assert len(np.unique(table.masks, axis=0)) == 2**3 - 1


# -- through the pipeline and the command line -----------------------------------------------

def _fits_config(tmp_path, table):
    config = keggin_config(tmp_path)
    del config["data"]
    config["fits"] = str(table)
    path = tmp_path / "fits.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fits_table_inputs_read_the_model_labels_in_any_order(tmp_path):
    """``load_inputs`` gives the reader the Keggin model's labels: a table with its
    columns reversed gives the catalogue of the one in the model's order."""
    ids, rw, masks = _rows(11, 60, 24)
    labels = [f"W{k}" for k in range(1, 25)]
    catalogues = []
    for name, order in (("ordered", slice(None)), ("reversed", slice(None, None, -1))):
        table = _write(tmp_path, "id,rw," + ",".join(labels[order]) + "\n" + "\n".join(
            f"{i},{r!r},{_bits(m[order])}" for i, r, m in zip(ids, rw, masks, strict=True)),
            f"{name}.csv")
        path = _fits_config(tmp_path, table)
        inputs = load_inputs(parse_config(path.read_text(), tmp_path))
        catalogues.append(inputs.masks())
    assert np.array_equal(catalogues[0], masks) and np.array_equal(catalogues[1], masks)


def test_dry_run_of_a_bad_fits_table_is_one_line_and_exit_2(tmp_path):
    ids, rw, masks = _rows(7, 40, 24)
    table = _write(tmp_path, "id,rw," + ",".join(f"W{k}" for k in range(24)) + "\n" + "\n".join(
        f"{i},{r!r},{_bits(m)}" for i, r, m in zip(ids, rw, masks, strict=True)))
    proc = run_cli("run", str(_fits_config(tmp_path, table)), "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mlmotex-hpc:") and proc.stderr.count("\n") == 1
    assert "'W0'" in proc.stderr and "W1, W2, W3, W4" in proc.stderr
