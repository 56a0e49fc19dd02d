"""The second hostile sweep (issue 27): one case per class of fault it found.

- a run stopped at a stage (``--until``) is finished by the next ``run``;
- the dry run and the run give one verdict, from one preflight, on every refusal;
- every command that reads a run's inputs again checks them against the run's digests;
- a model too small to learn from, outputs that cannot be written and a disk that fills
  up are refused in one line, before the work or without losing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import yaml

from mlmotex_hpc.errors import InputError

from .conftest import KEGGIN_GR, KEGGIN_XYZ, keggin_config, run_cli
from .test_resume import errors

pytestmark = pytest.mark.mpi


def _config(tmp_path, name="config.yaml", **overrides) -> object:
    overrides["catalogue"] = {"size": 64, "seed": 1, "batch_size": 8,
                              **overrides.get("catalogue", {})}
    raw = keggin_config(tmp_path, **overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line(proc, code: int = 2) -> str:
    """The one error line of a refused command (and nothing worse)."""
    ours = errors(proc)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(ours) == 1 and ours[0].startswith("mlmotex-hpc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return ours[0]


def _stage(h5) -> str:
    with h5py.File(h5) as f:
        return f.attrs["finished_stage"]


@pytest.mark.slow
def test_a_run_stopped_at_a_stage_is_finished_by_the_next_run(tmp_path):
    cfg = _config(tmp_path)
    h5 = tmp_path / "out" / "motex.h5"
    assert run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2).returncode == 0
    assert _stage(h5) == "fit"
    with h5py.File(h5) as f:
        rw = f["fits/rw"][()]
        assert "atoms" not in f
    dry = run_cli("run", str(cfg), "--dry-run")
    assert dry.returncode == 0 and "finished up to stage fit" in dry.stdout, dry.stderr
    proc = run_cli("run", str(cfg), "--until", "learn", ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "finished up to stage fit" in proc.stdout and "step 2: fitting" not in proc.stdout
    assert _stage(h5) == "learn"
    proc = run_cli("run", str(cfg), "--resume", ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" not in proc.stdout and "step 2: fitting" not in proc.stdout
    assert _stage(h5) == "explain"
    assert (tmp_path / "out" / "atom_contributions.csv").exists()
    # the same as a run that never stopped
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "whole"), "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(h5) as f, h5py.File(tmp_path / "whole" / "motex.h5") as ref:
        np.testing.assert_array_equal(f["fits/rw"][:, : rw.shape[1]], rw)
        for name in ("fits/rw", "atoms/contribution", "atoms/contribution_se",
                     "atoms/in_motif", "catalogue/mask"):
            np.testing.assert_array_equal(f[name][()], ref[name][()], err_msg=name)
    assert "nothing to do" in run_cli("run", str(cfg), ranks=2).stdout
    # and a finished run asked for less is complete too
    assert "nothing to do" in run_cli("run", str(cfg), "--until", "fit", ranks=1).stdout


def _cannot_mount(reason: str) -> None:
    """Where the file system cases cannot run: a failure where ``make test`` requires them
    (as root on Debian, as in CI: ``MLMOTEX_REQUIRE_MOUNT=1``), else a skip with the reason
    (an unprivileged user or container may not mount)."""
    if os.environ.get("MLMOTEX_REQUIRE_MOUNT") == "1":
        pytest.fail(reason + "; MLMOTEX_REQUIRE_MOUNT=1 requires these cases")
    pytest.skip(reason)


@contextlib.contextmanager
def _small_disk(folder, size: str):
    """A tmpfs of ``size`` at ``folder`` (root: as in CI); skipped with the reason where
    this process may not mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        _cannot_mount(f"cannot mount a small file system here ({proc.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _another_config(tmp_path):
    cfg = _config(tmp_path)
    assert run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2).returncode == 0
    raw = yaml.safe_load(cfg.read_text())
    raw["fit"]["rmax"] = 9.0
    cfg.write_text(yaml.safe_dump(raw))
    return [str(cfg)], "holds a run of a different config"


def _changed_data(tmp_path):
    data = tmp_path / "a.gr"
    shutil.copy(KEGGIN_GR, data)
    cfg = _config(tmp_path, data=str(data))
    assert run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2).returncode == 0
    with h5py.File(tmp_path / "out" / "motex.h5", "r+") as f:
        f["fits/batch_done"][0, 0] = 0  # as if killed
    data.write_text(data.read_text() + "# edited\n")  # the same numbers, another file
    return [str(cfg)], "a.gr has changed since the run began"


def _results_a_folder(tmp_path):
    cfg = _config(tmp_path)
    (tmp_path / "out" / "motex.h5").mkdir(parents=True)
    return [str(cfg), "--overwrite"], "motex.h5 is a folder, not a results file"


def _output_a_file(tmp_path):
    (tmp_path / "out").write_text("")
    return [str(_config(tmp_path))], "is a file, not a folder"


def _other_frames(tmp_path):
    for name in ("a.gr", "b.gr"):
        shutil.copy(KEGGIN_GR, tmp_path / name)
    cfg = _config(tmp_path, data=[str(tmp_path / "a.gr"), str(tmp_path / "b.gr")])
    out = str(tmp_path / "task")
    proc = run_cli("run", str(cfg), "--frames", "0:1", "--out", out, "--until", "fit",
                   "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    return [str(cfg), "--frames", "1:2", "--out", out], "holds frames 0:1"


def _too_few_motifs(tmp_path):
    lines = KEGGIN_XYZ.read_text().splitlines()
    atoms = [ln for ln in lines[2:] if ln.split() and ln.split()[0] == "O"]
    w = [ln for ln in lines[2:] if ln.split() and ln.split()[0] == "W"][:3]
    model = tmp_path / "w3.xyz"
    model.write_text(f"{len(w) + len(atoms)}\nthree W\n" + "\n".join(w + atoms) + "\n")
    cfg = _config(tmp_path, structure=str(model), catalogue={"size": "all"})
    return [str(cfg)], "make only 7 distinct motif(s)"


CASES = {"another config": _another_config, "changed data": _changed_data,
         "motex.h5 a folder": _results_a_folder, "output.dir a file": _output_a_file,
         "other frames": _other_frames, "N = 3": _too_few_motifs}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_the_dry_run_refuses_what_the_run_refuses(case, tmp_path):
    args, words = CASES[case](tmp_path)
    def files():  # the run's lock file is its own, and may be left
        return sorted(p.name for p in tmp_path.rglob("*") if not p.name.endswith(".lock"))

    before = files()
    dry = _one_line(run_cli("run", *args, "--dry-run", timeout=60))
    real = _one_line(run_cli("run", *args, ranks=2, timeout=60))
    assert words in real, real
    assert dry == real
    assert files() == before  # nothing written


@pytest.mark.slow
def test_the_dry_run_refuses_a_folder_in_use_and_a_small_disk(tmp_path):
    cfg = _config(tmp_path)
    (tmp_path / "out").mkdir()
    lock = tmp_path / "out" / ".motex.h5.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere\n")
        held.flush()
        dry = _one_line(run_cli("run", str(cfg), "--dry-run", timeout=60))
        real = _one_line(run_cli("run", str(cfg), ranks=2, timeout=60))
    assert "still running" in real and dry == real
    with _small_disk(tmp_path / "small", "256k") as small:
        big = _config(tmp_path, "big.yaml", catalogue={"size": 4000},
                      output={"dir": str(small / "out")})
        dry = _one_line(run_cli("run", str(big), "--dry-run", timeout=60))
        real = _one_line(run_cli("run", str(big), ranks=2, timeout=60))
        assert "KiB are free there" in real and dry == real  # units that show the numbers
        assert not (small / "out" / "motex.h5").exists()


@pytest.mark.slow
def test_every_command_that_reads_the_inputs_again_checks_them(tmp_path):
    data = tmp_path / "a.gr"
    shutil.copy(KEGGIN_GR, data)
    cfg = _config(tmp_path, data=str(data))
    assert run_cli("run", str(cfg), "--quiet", ranks=2).returncode == 0
    h5 = tmp_path / "out" / "motex.h5"
    original = data.read_bytes()
    data.write_text(data.read_text() + "# edited\n")
    commands = [
        (["refine", str(h5), "-o", str(tmp_path / "refine")], None),
        (["plot", str(h5), "-o", str(tmp_path / "plot"), "--quiet"], None),
        (["learn", str(h5), "--quiet"], 2),
        (["run", str(cfg)], 2),
        (["run", str(cfg), "--dry-run"], None),
    ]
    for args, ranks in commands:
        line = _one_line(run_cli(*args, ranks=ranks, timeout=120))
        assert "a.gr has changed since the run began" in line, (args, line)
    assert not (tmp_path / "refine").exists()
    data.write_bytes(original)
    proc = run_cli("refine", str(h5), "-o", str(tmp_path / "refine"))
    assert proc.returncode == 0, proc.stderr


def test_outputs_that_cannot_be_written_are_refused_before_the_work(keggin_run, tmp_path):
    out, _ = keggin_run
    h5 = out / "motex.h5"
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: a read-only file system then
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                               str(locked)], capture_output=True, text=True)
        if proc.returncode != 0:
            _cannot_mount(f"cannot mount a read-only file system here "
                          f"({proc.stderr.strip()})")
    else:
        locked.chmod(0o555)
    try:
        for args in (["plot", str(h5), "-o", str(locked), "--quiet"],
                     ["refine", str(h5), "-o", str(locked)]):
            proc = run_cli(*args, timeout=60)
            line = _one_line(proc)
            assert "cannot write in the output folder" in line, line
            assert "refining" not in proc.stdout and "drawing" not in proc.stdout
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(locked)], check=False)


def _fill(folder) -> object:
    """Fill the file system of ``folder`` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as f:
        while True:
            f.write(b"\0")
            f.flush()
    return filler


@pytest.mark.slow
def test_a_disk_that_fills_while_learning_ends_in_one_line_and_loses_nothing(tmp_path):
    with _small_disk(tmp_path / "small", "4m") as small:
        cfg = _config(tmp_path, catalogue={"size": 400}, output={"dir": str(small / "out")})
        assert run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2).returncode == 0
        h5 = small / "out" / "motex.h5"
        fits = h5.read_bytes()
        filler = _fill(small)  # known before the run: the preflight says so
        line = _one_line(run_cli("run", str(cfg), ranks=2, timeout=60))
        assert "are free there" in line, line
        filler.unlink()
        # the disk fills while the job learns (another job's output, say)
        from .conftest import CLI, MPIRUN, mpi_env

        job = subprocess.Popen([MPIRUN, "--bind-to", "none", "-n", "2", str(CLI), "run",
                                str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=mpi_env(MLMOTEX_TEST_PAUSE="learn:4"))
        try:
            finishing = h5.with_name("motex.h5.finishing")
            for _ in range(300):
                if finishing.exists() or job.poll() is not None:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
            filler = _fill(small)
            out, err = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        proc = subprocess.CompletedProcess(job.args, job.returncode, out, err)
        line = _one_line(proc)
        assert "no space left" in line.lower(), line
        assert h5.read_bytes() == fits  # the fits untouched
        filler.unlink()
        proc = run_cli("run", str(cfg), "--quiet", ranks=2)
        assert proc.returncode == 0, proc.stderr
        assert _stage(h5) == "explain"


@pytest.mark.slow
def test_refine_on_a_run_learned_from_a_fits_table_says_why_not(tmp_path):
    from mlmotex_hpc.io.fitstable import write_fits_table

    rng = np.random.default_rng(5)
    masks = rng.random((60, 24)) < 0.5
    masks[~masks.any(axis=1), 0] = True  # no empty motif
    table = write_fits_table(tmp_path / "fits.txt", np.arange(60), rng.random(60), masks)
    raw = keggin_config(tmp_path)
    del raw["data"]
    raw["fits"] = str(table)
    cfg = tmp_path / "fits.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert run_cli("run", str(cfg), "--quiet", ranks=1).returncode == 0
    line = _one_line(run_cli("refine", str(tmp_path / "out" / "motex.h5")))
    assert "learned from the fits table fits.txt" in line and "no data" in line, line


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    """PyYAML reads `1e3` as a string; a config means the number."""
    from mlmotex_hpc.config import parse_config

    raw = keggin_config(tmp_path)
    text = yaml.safe_dump(raw).replace("size: 400", "size: 1e3").replace("rmax: 10.0",
                                                                          "rmax: 1E1")
    assert "size: 1e3" in text and "rmax: 1E1" in text
    config = parse_config(text, tmp_path)
    assert config.catalogue.size == 1000 and isinstance(config.catalogue.size, int)
    assert config.fit.rmax == 10.0
    with pytest.raises(InputError, match="expected an integer"):
        parse_config(text.replace("size: 1e3", "size: 1.5e0"), tmp_path)


@pytest.mark.slow
def test_a_fits_table_gives_the_same_answer_in_any_column_order(tmp_path):
    """Per-atom columns named by the model's labels: read by name, not by position."""
    from mlmotex_hpc.io.structure import read_xyz, site_labels

    labels = [lab for lab, el in zip(site_labels(read_xyz(KEGGIN_XYZ).elements),
                                     read_xyz(KEGGIN_XYZ).elements, strict=True) if el == "W"]
    rng = np.random.default_rng(11)
    masks = rng.random((80, len(labels))) < 0.5
    masks[~masks.any(axis=1), 0] = True
    rw = 0.3 + 0.5 * masks[:, : len(labels) // 2].mean(axis=1) + 0.02 * rng.random(80)
    acv = {}
    for name, order in (("ordered", list(range(len(labels)))),
                        ("reversed", list(range(len(labels)))[::-1])):
        table = tmp_path / f"{name}.csv"
        table.write_text("id,rw," + ",".join(labels[k] for k in order) + "\n" + "".join(
            f"{i},{float(r)!r}," + ",".join(str(int(m[k])) for k in order) + "\n"
            for i, (r, m) in enumerate(zip(rw, masks, strict=True))))
        raw = keggin_config(tmp_path, output={"dir": str(tmp_path / name)})
        del raw["data"]
        raw["fits"] = str(table)
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        proc = run_cli("run", str(cfg), "--quiet", ranks=1)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(tmp_path / name / "motex.h5") as f:
            acv[name] = f["atoms/contribution"][()]
    np.testing.assert_array_equal(acv["reversed"], acv["ordered"])
    assert (acv["ordered"][0, : len(labels) // 2] > 0).all()  # the atoms that raise Rw


@pytest.mark.parametrize("kind", ["xyz coordinate", "cif cell length"])
def test_a_model_of_absurd_size_is_one_line(kind, tmp_path):
    """1e300 Å overflowed the distance arithmetic (a traceback from SciPy's tree)."""
    from .conftest import EXAMPLES

    if kind == "xyz coordinate":
        model = tmp_path / "big.xyz"
        model.write_text("3\nx\nW 0 0 0\nW 1e300 0 0\nW 0 2 0\n")
        words = "a coordinate of 1e+300 Å"
    else:
        cif = sorted((EXAMPLES / "cif").glob("*.cif"))[0]
        model = tmp_path / "huge.cif"
        model.write_text("\n".join("_cell_length_a 1e300" if ln.startswith("_cell_length_a")
                                   else ln for ln in cif.read_text().splitlines()))
        words = "its cell is too large"
    for args in (["pdf", str(model), "-o", str(tmp_path / "g.gr")],
                 ["cut", str(model), "-o", str(tmp_path / "c.xyz"), "--sphere", "5"]):
        line = _one_line(run_cli(*args, timeout=60))
        assert words in line, line


def test_data_files_are_told_apart(tmp_path):
    """One file twice is refused; two files of one name in two folders are two inputs
    (their digests were keyed by name: a change to the second went unseen)."""
    from mlmotex_hpc.config import parse_config
    from mlmotex_hpc.io.digests import input_digests

    raw = keggin_config(tmp_path, data=[str(KEGGIN_GR), str(KEGGIN_GR)])
    with pytest.raises(InputError, match="names DanMAX_AlphaKeggin.gr twice"):
        parse_config(yaml.safe_dump(raw), tmp_path)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(KEGGIN_GR, tmp_path / folder / "frame.gr")
    raw = keggin_config(tmp_path, data=[str(tmp_path / "a" / "frame.gr"),
                                        str(tmp_path / "b" / "frame.gr")])
    config = parse_config(yaml.safe_dump(raw), tmp_path)
    before = input_digests(config)
    with open(tmp_path / "b" / "frame.gr", "a") as f:
        f.write("# edited\n")
    after = input_digests(config)
    assert len(before) == 3 and before != after


@pytest.mark.slow
def test_a_disk_that_fills_while_fitting_ends_in_one_line_and_keeps_the_fits(tmp_path):
    """The disk fills after the file is made, while work units are being fitted."""
    from .conftest import CLI, MPIRUN, mpi_env

    with _small_disk(tmp_path / "small", "4m") as small:
        cfg = _config(tmp_path, catalogue={"size": 400, "batch_size": 8},
                      output={"dir": str(small / "out")})
        h5 = small / "out" / "motex.h5"
        job = subprocess.Popen([MPIRUN, "--bind-to", "none", "-n", "2", str(CLI), "run",
                                str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=mpi_env(MLMOTEX_TEST_PAUSE="fit:0.2"))
        try:
            for _ in range(600):
                if h5.exists() or job.poll() is not None:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
            subprocess.run(["sleep", "1"], check=True)  # some work units written
            filler = _fill(small)
            out, err = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        line = _one_line(subprocess.CompletedProcess(job.args, job.returncode, out, err))
        assert "no space left" in line.lower(), line
        with h5py.File(h5) as f:  # the fit datasets are allocated when the file is made:
            done = int(f["fits/batch_done"][()].sum())  # units write into held space, and
        assert done == 40, done  # the full disk shows when learning needs more
        filler.unlink()
        proc = run_cli("run", str(cfg), "--quiet", ranks=2)
        assert proc.returncode == 0, proc.stderr
        assert _stage(h5) == "explain"
