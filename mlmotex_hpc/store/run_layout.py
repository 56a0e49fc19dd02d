"""The layout of ``motex.h5``, once, as data: every dataset and attribute, its shape, type,
when it is there and what it means.

:mod:`.runfile` writes and reads the file; this table says what it holds.
:func:`reference` renders it as the file-format reference (Markdown), and
:func:`undescribed` lists what a real file holds that the table does not describe (the
tests run it on finished runs, so the table cannot drift from the writer).

Dimensions: F frames, P points of a frame's fit range, M motifs (rows of the catalogue,
the extract stage's rows after ``n_catalogue``), N permutable atoms, n atoms of the model,
B motif batches, FB frame blocks, R adaptive rounds, L rows learned from (exhaustive
runs), K best motifs kept, T convergence trials, C convergence columns.
"""

from __future__ import annotations

from . import layout
from .layout import Entry

#: The layout this version writes, and the newest it reads. 1: files written before the
#: ``layout_version`` attribute existed (the same layout as 2, read as they are).
LAYOUT_VERSION = 2

# -- names the writer and the readers share ---------------------------------------------

#: Fit results every run has (plus ``status``, and the freed parameters' datasets).
FIT_FIELDS = ("rw", "scale", "zoom")
#: The stages a run goes through, in order (``run --until``).
STAGES = ("fit", "learn", "explain")
#: Per-atom results of the explain stage, one (F, N) dataset each.
ATOM_DATASETS = ("contribution", "uncertainty", "confidence", "kept_mean", "removed_mean",
                 "contribution_se")
#: Datasets with a leading frame axis: ``merge`` joins them along it.
FRAME_DATASETS = ("fits/rw", "fits/scale", "fits/zoom", "fits/status",
                  "atoms/contribution", "atoms/uncertainty", "atoms/confidence",
                  "atoms/kept_mean", "atoms/removed_mean", "atoms/in_motif",
                  "atoms/contribution_se", "atoms/label", "atoms/acv_negative",
                  "shap/values", "shap/base_value", "shap/explained", "ml/test_predicted",
                  "polish/mask", "polish/rw", "polish/start_mask", "polish/start_rw")
#: Datasets every part of a job array holds identically: ``merge`` copies the first's.
SHARED_DATASETS = ("model", "catalogue", "atoms/index")

#: Where a fitted motif came from (``/catalogue/origin``).
ORIGIN_CODES = {"catalogue": 0, "adaptive": 1, "extract": 2}
EXACT_DEFINITION = (
    "shapley: the exact Shapley value of each permutable atom in the game v(S) = Rw of "
    "motif S over every motif (v of the empty motif and of a motif without pairs = 1, the "
    "Rw of a zero model); negative: the atom lowers Rw. main_effect: mean Rw of the motifs "
    "keeping the atom - mean Rw of the (non-empty) motifs removing it. NaN in a frame with "
    "a motif whose fit failed")
CONVERGENCE_DEFINITION = (
    "mlmotex-hpc convergence: one row per ML-MotEx random catalogue drawn from the "
    "exhaustive table (size, seed), steps 3-4 run on it, compared with the exact answer: "
    "sign_agreement and spearman of its ACVs against /atoms/shapley, answer_errors (atoms "
    "in one of the ACV < 0 and Shapley < 0 sets only), mean_sign_agreement (the sample's "
    "own main effects, no model), best_rw in it against global_rw")
BEST_DEFINITION = (
    "the K lowest Rw of every motif of the exhaustive table, per frame, lowest first "
    "(ties: the lower row); row r is the motif of binary code r + 1")
#: What the extract stage writes per frame and atom (F, N).
EXTRACT_DATASETS = ("label", "acv_negative")
LABEL_DEFINITION = (
    "confidence label: 1 in (ACV <= -z SE), 0 out (ACV >= z SE), 2 uncertain (or CF below "
    "the minimum); z and the minimum are extract.label_z and extract.label_min_cf")
STATUS_CODES = "0 ok, 1 not converged, 2 no pairs, 3 Uiso or delta2 at a bound, -1 not fitted"
ATOMS_DEFINITION = (
    "contribution = mean SHAP over motifs keeping the atom - mean over motifs removing it "
    "(negative: the atom lowers Rw, it belongs to the motif); uncertainty = "
    "sqrt((sK^2 + sR^2)/2), population standard deviations; confidence = |ACV|/sigma; "
    "contribution_se = sqrt(sK^2/nK + sR^2/nR), the standard error of the contribution"
)
SHAP_DEFINITION = (
    "TreeSHAP values of the motifs in explained (1); NaN for the others. learn.shap: all "
    "explains every motif, auto a seeded random sample of those with a finite Rw, grown "
    "until every ACV's standard error is below learn.shap_target x the largest |ACV|")
POLISH_DEFINITION = (
    "mask, rw: each frame's polished motif and its fitted Rw; start_mask, start_rw: the "
    "start it came from; path (JSON, per frame, per start): each accepted move (added, "
    "removed: 0-based permutable atoms) and the Rw after it; fits: motifs fitted by the "
    "extract stage (rows of /catalogue with origin 2)")
PREDICTED_DEFINITION = (
    "Rw predicted by the frame's model for its test motifs (NaN: not in the test set)")


#: When a dataset or attribute is there.
ALWAYS = layout.ALWAYS
LEARNED = "after step 3"
EXPLAINED = "after step 4"
EXTRACTED = "after the extract stage"
POLISHED = "after polishing"
EXHAUSTIVE = "exhaustive runs"
ADAPTIVE = "adaptive catalogues"
REFINED = "when fit.refine frees it"
CRYSTAL = "a model from a crystal file"
TIMED = "with frames.time"
CONVERGENCE = "after mlmotex-hpc convergence"
TASK = "a job-array task's file"
MERGED = "a merged file"
TABLE = "a run on a fits table"


LAYOUT: tuple[Entry, ...] = (
    Entry("/", "the run", attrs=(
        ("config", "the config, as YAML text"),
        ("config_hash", "SHA-256 of the config's content (comments, spacing, key order do "
                        "not count)"),
        ("fits_hash", "the same, without the learn section: what the fits depend on"),
        ("config_dir", "the config's folder: relative paths resolve against it"),
        ("version", "mlmotex-hpc's version"),
        ("layout_version", f"this layout's version ({LAYOUT_VERSION}); absent: 1"),
        ("created", "when the file was made (ISO 8601)"),
        ("hdf5_mode", "parallel (mpio) or serial"),
        ("complete", "the run finished (up to finished_stage)"),
        ("finished_stage", "fit, learn or explain: where run --until stopped a complete "
                           "file"),
        ("input_digests", "JSON: SHA-256 of each input file's content, by role"),
        ("frame_range", f"[start, stop): the frames of the series held ({TASK})"),
        ("fits_table", f"the table's file name ({TABLE})"),
        ("merged_from", f"JSON: the parts' paths ({MERGED})"),
    )),
    Entry("/model", "the starting model"),
    Entry("/model/elements", "element of every atom", ("n",), "S"),
    Entry("/model/xyz", "Cartesian coordinates", ("n", "3"), "f8", attrs=(("units", "Å"),)),
    Entry("/model/sites", "crystal site label of every atom", ("n",), "S", CRYSTAL),
    Entry("/frames", "the series"),
    Entry("/frames/names", "each frame's data file name", ("F",), "S"),
    Entry("/frames/time", "each frame's time", ("F",), "f8", TIMED,
          attrs=(("unit", "frames.time_unit"),)),
    Entry("/data", "the measured data, one group a frame"),
    Entry("/data/<frame>", "a frame's fit range"),
    Entry("/data/<frame>/r", "r of the fit range (Å)", ("P",), "f8"),
    Entry("/data/<frame>/g", "the measured G in the fit range", ("P",), "f8"),
    Entry("/catalogue", "the motifs", attrs=(
        ("n_catalogue", "rows of the catalogue; the extract stage's rows follow"),
        ("exhaustive", "1: every motif, row r the motif of binary code r + 1"),
        ("rounds", "adaptive rounds drawn"),
        ("stopped", "why an adaptive catalogue stopped drawing"),
        ("origin_codes", "the codes of /catalogue/origin"),
    )),
    Entry("/catalogue/mask", "1: the permutable atom is kept", ("M", "N"), "u1"),
    Entry("/catalogue/size", "permutable atoms kept", ("M",), "i8"),
    Entry("/catalogue/permutable", "model index of each permutable atom", ("N",), "i8"),
    Entry("/catalogue/origin", "0 catalogue, 1 an adaptive round, 2 the extract stage",
          ("M",), "u1"),
    Entry("/catalogue/round", "the adaptive round that drew it (-1: the extract stage)",
          ("M",), "i2"),
    Entry("/catalogue/round_labels", "the atom labels after each adaptive round", ("R", "N"),
          "i1", ADAPTIVE),
    Entry("/catalogue/learn_rows", "the rows steps 3-4 learn from and explain", ("L",), "i8",
          EXHAUSTIVE, attrs=(("definition", "what the rows are"),)),
    Entry("/fits", "step 2: every motif fitted to every frame", attrs=(
        ("batch_size", "motifs per work unit"), ("frame_block", "frames per work unit"),
        ("status_codes", "the codes of /fits/status"),
    )),
    Entry("/fits/rw", "Rw of the fit (NaN: failed)", ("F", "M"), "f8"),
    Entry("/fits/scale", "the fitted scale", ("F", "M"), "f8"),
    Entry("/fits/zoom", "the fitted zoom (expansion)", ("F", "M"), "f8"),
    Entry("/fits/status", "0 ok, 1 not converged, 2 no pairs, 3 Uiso or delta2 at a "
          "bound, -1 not fitted", ("F", "M"), "i1"),
    Entry("/fits/uiso_<El>", "the element's fitted Uiso (Å²)", ("F", "M"), "f8", REFINED),
    Entry("/fits/delta2", "the fitted delta2 (Å²)", ("F", "M"), "f8", REFINED),
    Entry("/fits/batch_done", "1: the work unit (motif batch × frame block) is written",
          ("B", "FB"), "u1"),
    Entry("/ml", "step 3: the model of each frame", when=LEARNED, attrs=(
        ("test_mae", "test mean absolute error (per frame)"),
        ("test_rmse", "test root-mean-square error (per frame)"),
        ("test_r2", "test R² (per frame)"),
        ("baseline_mae", "MAE of predicting the mean (per frame)"),
        ("n_estimators", "trees of the final model (per frame)"),
        ("cv_score", "the search's best cross-validated score (per frame)"),
        ("n_train", "motifs trained on (per frame)"),
        ("n_test", "motifs held out for the test (per frame)"),
        ("params", "JSON: the chosen hyperparameters"),
        ("history", "JSON: the search's history"),
        ("settings", "JSON: the learning settings used"),
        ("searched_frames", "the frames the shared search ran on (a series)"),
    )),
    Entry("/ml/test_predicted", "the model's Rw for its test motifs (NaN: not tested)",
          ("F", "M"), "f4", LEARNED, attrs=(("definition", "what the values are"),)),
    Entry("/atoms", "step 4: per-atom results", when=EXPLAINED,
          attrs=(("definition", "the formulas of the per-atom results"),)),
    Entry("/atoms/index", "model index of each permutable atom", ("N",), "i8", EXPLAINED),
    Entry("/atoms/contribution", "the atom contribution value (ACV): mean SHAP over motifs "
          "keeping the atom - over motifs removing it; < 0: the atom lowers Rw", ("F", "N"),
          "f8", EXPLAINED, attrs=(("definition", "the formulas"),)),
    Entry("/atoms/uncertainty", "sqrt((sK² + sR²)/2)", ("F", "N"), "f8", EXPLAINED),
    Entry("/atoms/confidence", "|ACV| / uncertainty", ("F", "N"), "f8", EXPLAINED),
    Entry("/atoms/kept_mean", "mean SHAP over motifs keeping the atom", ("F", "N"), "f8",
          EXPLAINED),
    Entry("/atoms/removed_mean", "mean SHAP over motifs removing it", ("F", "N"), "f8",
          EXPLAINED),
    Entry("/atoms/contribution_se", "the ACV's standard error", ("F", "N"), "f8", EXPLAINED),
    Entry("/atoms/in_motif", "the answer: 1 the atom is in the motif", ("F", "N"), "b1",
          EXPLAINED),
    Entry("/atoms/label", "1 in, 0 out, 2 uncertain (ACV against its standard error)",
          ("F", "N"), "i1", EXTRACTED, attrs=(("definition", "the rule"),)),
    Entry("/atoms/acv_negative", "1: ACV < 0", ("F", "N"), "b1", EXTRACTED),
    Entry("/atoms/answer", "JSON: the extract stage's settings and what the answer is", (),
          "S", EXTRACTED),
    Entry("/atoms/shapley", "exact Shapley value of each atom from every motif", ("F", "N"),
          "f8", EXHAUSTIVE, attrs=(("definition", "the game"),)),
    Entry("/atoms/main_effect", "mean Rw keeping the atom - removing it", ("F", "N"), "f8",
          EXHAUSTIVE, attrs=(("definition", "the game"),)),
    Entry("/shap", "step 4: TreeSHAP values", when=EXPLAINED, attrs=(
        ("definition", "which motifs are explained"),
        ("n_explained", "motifs explained per frame"),
    )),
    Entry("/shap/values", "SHAP value of each feature (N atoms, then the size); NaN: not "
          "explained", ("F", "M", "N+1"), "f4", EXPLAINED),
    Entry("/shap/base_value", "the model's expected value (NaN: not explained)", ("F", "M"),
          "f4", EXPLAINED),
    Entry("/shap/explained", "1: the motif was explained", ("F", "M"), "u1", EXPLAINED),
    Entry("/polish", "the extract stage's polishing by real fits", when=POLISHED, attrs=(
        ("path", "JSON, per frame and start: each accepted move and the Rw after it"),
        ("fits", "motifs fitted by the extract stage"),
        ("budget", "fits it could spend"),
        ("definition", "what the datasets are"),
    )),
    Entry("/polish/mask", "each frame's polished motif", ("F", "N"), "b1", POLISHED),
    Entry("/polish/rw", "its fitted Rw", ("F",), "f8", POLISHED),
    Entry("/polish/start_mask", "the start it came from", ("F", "N"), "b1", POLISHED),
    Entry("/polish/start_rw", "the start's Rw", ("F",), "f8", POLISHED),
    Entry("/best", "the K lowest Rw of every motif", when=EXHAUSTIVE, attrs=(
        ("definition", "the order"), ("info", "JSON: rows, blocks, failed fits, seconds"),
    )),
    Entry("/best/row", "their rows", ("F", "K"), "i8", EXHAUSTIVE),
    Entry("/best/rw", "their Rw", ("F", "K"), "f8", EXHAUSTIVE),
    Entry("/best/mask", "their masks", ("F", "K", "N"), "u1", EXHAUSTIVE),
    Entry("/convergence", "one row per trial catalogue", ("T", "C"), "f8", CONVERGENCE,
          attrs=(("columns", "the columns' names"), ("frame", "the frame compared"),
                 ("definition", "what is compared"))),
    Entry("/timings", "seconds per stage", attrs=(
        ("catalogue", "s"), ("fit", "s"), ("learn", "s"), ("explain", "s"),
        ("extract", "s"), ("exact", "s"), ("outputs", "s"), ("total", "s"),
        ("ranks", "ranks of the job"), ("fits_per_second", "the fit stage's rate"),
        ("note", f"how the times were made ({MERGED})"),
    )),
)


def entry_for(path: str) -> Entry | None:
    """The entry of :data:`LAYOUT` that describes ``path`` (``/fits/uiso_W``)."""
    return layout.entry_for(LAYOUT, path)


def undescribed(h5) -> list[str]:
    """What the open ``motex.h5`` holds that :data:`LAYOUT` does not describe, or
    describes otherwise, one line each."""
    return layout.undescribed(LAYOUT, h5)


def reference() -> str:
    """The file-format reference of ``motex.h5``, as Markdown."""
    return layout.reference(LAYOUT, "motex.h5", LAYOUT_VERSION,
                            __doc__.split("\n\n")[-1].strip().replace("\n", " "))


if __name__ == "__main__":  # python -m mlmotex_hpc.store.run_layout > docs/motex-h5.md
    print(reference(), end="")
