"""Train the tiny shared model fixture and write what both suites must reproduce from it.

    .venv/bin/python shared-tests/make_model_fixture.py                        # retrain and rewrite all
    .venv/bin/python shared-tests/make_model_fixture.py --expectations-only    # same model, new outputs

Writes fixtures/tiny_model/ (a pysave model directory, ~100 KB) trained on fixtures/pbmc_tiny.h5ad,
and expectations/tiny_model.json: the latent (encoder means) of every fixture cell, a fixed-seed
generation (and one of a combination seen in training, so calibrated; one of a combination never
seen, which warns and names a shift_from; and one table of both, which the default guidance weighs
row by row), the batch correction averaged over all batches and a transfer with output
"input_plus_change", which pytest (test_shared_fixtures.py) and testthat (r-package/tests) compare to float
tolerance. Copies of the fixtures go to r-package/inst/extdata for the R package's examples.
Re-run only when the engine's outputs change on purpose, and commit the results.
"""
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pandas as pd

import pysave
from pysave.io import read_h5ad

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
EXTDATA = os.path.join(HERE, "..", "r-package", "inst", "extdata")

TINY = dict(hidden_size=32, condition_dim=32, latent_dim=16, latent_token_size=8, n_encoder_layers=1,
            n_decoder_layers=1, n_heads=2, flow_hidden_size=32, flow_layers=1, flow_token_size=8,
            flow_heads=2, n_blocks=8, seed=0)
TRAIN = dict(max_epochs=20, flow_epochs=60, batch_size=32, lr=3e-3, flow_lr=3e-3, device="cpu", progress=False)
# What both suites reproduce (R: GenerateCells(model, n = 6, conditions = list(cell_type = "B"), seed = 7)).
GENERATE = dict(conditions={"cell_type": "B"}, n_cells=6, seed=7)
# A combination seen in training (5 fixture cells), so generation is calibrated (R: GenerateCells(model, n = 6,
# conditions = list(batch = "10x_3prime_v1", cell_type = "B"), seed = 7)).
GENERATE_SEEN = dict(conditions={"batch": "10x_3prime_v1", "cell_type": "B"}, n_cells=6, seed=7)
# A combination no fixture cell has (10x_3prime_v2 x NK): generation warns and names the shift_from that
# reaches it from the most strata (R: GenerateCells(model, n = 6, conditions = list(batch = "10x_3prime_v2",
# cell_type = "NK"), seed = 7) warns).
GENERATE_NEVER_SEEN = dict(conditions={"batch": "10x_3prime_v2", "cell_type": "NK"}, n_cells=6, seed=7)
# One call asking for both kinds: the default guidance (None) samples the seen combination's rows at 1.5 and the
# never-seen one's at 1, recorded as "auto" (R: GenerateCells(model, conditions = data.frame(batch = ..., cell_type
# = ..., n_cells = c(3, 3)), seed = 7)).
GENERATE_MIXED = dict(table=[{**GENERATE_SEEN["conditions"], "n_cells": 3}, {**GENERATE_NEVER_SEEN["conditions"], "n_cells": 3}],
                      seed=7)
# Batch correction averaged over every batch (R: RunSAVE(sce, model, corrected = TRUE, reference = "all")).
CORRECT = dict(reference="all")
# Transfer as the cells' own expression plus the decoded change (R: TransferCells(sce, model, target =
# list(batch = "10x_5prime"), via = "decoder", expression = "input_plus_change")).
TRANSFER = dict(target={"batch": "10x_5prime"}, via="decoder", output="input_plus_change")
# Transfer through the flow into combinations no training cell had (no 10x_3prime_v2 cell of some types) warns and
# records them (R: TransferCells(sce, model, target = list(batch = "10x_3prime_v2"), via = "flow", steps = 5) warns;
# the default via = "auto" takes the latent shift and does not).
TRANSFER_NEVER_SEEN = dict(target={"batch": "10x_3prime_v2"}, via="flow", n_steps=5)


def expected_outputs(model, adata) -> dict:
    latent = model.get_latent_representation(adata, key_added=None)
    gen = model.generate(GENERATE["conditions"], n_cells=GENERATE["n_cells"], seed=GENERATE["seed"])
    seen = model.generate(GENERATE_SEEN["conditions"], n_cells=GENERATE_SEEN["n_cells"], seed=GENERATE_SEEN["seed"])
    if not seen.uns["pysave"]["calibrated_cells"] == GENERATE_SEEN["n_cells"]:
        raise SystemExit("the seen combination was not calibrated; check the fixture's combinations")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning this case exists for; its text is the tests' to check
        never = model.generate(GENERATE_NEVER_SEEN["conditions"], n_cells=GENERATE_NEVER_SEEN["n_cells"],
                               seed=GENERATE_NEVER_SEEN["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the never-seen warning, as above
        mixed = model.generate_like(pd.DataFrame(GENERATE_MIXED["table"]), seed=GENERATE_MIXED["seed"])
    guidance = {k: v for k, v in mixed.uns["pysave"].items() if k.startswith("guidance")}
    if guidance.get("guidance_never_seen_cells") != 3:
        raise SystemExit("the mixed table's never-seen rows were not found; check the fixture's combinations")
    # The shift_from the warning names: the change whose shift is learned from the most strata.
    keys, cats = model.registry["condition_keys"], model.registry["categories"]
    codes = [[model._code_of(k, GENERATE_NEVER_SEEN["conditions"][k]) for k in keys]]
    found = model._never_seen(np.array(codes))
    if not (found and found[0][1]):
        raise SystemExit("the never-seen combination is seen, or no shift_from reaches it; check the fixture's combinations")
    column, code, _ = found[0][1][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as above
        moved = model.transfer(adata, **TRANSFER_NEVER_SEEN)
    if not moved.uns["pysave"].get("never_seen_combinations"):
        raise SystemExit("the flow transfer reaches no never-seen combination; check the fixture's combinations")
    return {
        "generate": GENERATE,
        "latent": np.asarray(latent, dtype=float).round(7).tolist(),
        "generated_X": np.asarray(gen.X, dtype=float).round(7).tolist(),
        "generated_latent": np.asarray(gen.obsm["X_save"], dtype=float).round(7).tolist(),
        # The fixture's combinations have fewer training cells than the spread calibration needs
        # (SPREAD_MIN_CELLS), so its provenance says none was widened; python/tests covers the widening.
        "generate_seen": {**GENERATE_SEEN, **{k: v for k, v in seen.uns["pysave"].items() if k.startswith("spread_")}},
        "generated_seen_X": np.asarray(seen.X, dtype=float).round(7).tolist(),
        "generate_never_seen": {**GENERATE_NEVER_SEEN, "never_seen_combinations": list(never.uns["pysave"]["never_seen_combinations"]),
                                "shift_from": {keys[column]: cats[keys[column]][code]}},
        "generate_mixed": {**GENERATE_MIXED, **guidance},
        "generated_mixed_X": np.asarray(mixed.X, dtype=float).round(7).tolist(),
        "correct": CORRECT,
        "corrected_X": np.asarray(model.correct(adata, layer_added=None, **CORRECT), dtype=float).round(7).tolist(),
        "transfer": TRANSFER,
        "transferred_X": np.asarray(model.transfer(adata, **TRANSFER).X, dtype=float).round(7).tolist(),
        "transfer_never_seen": {**TRANSFER_NEVER_SEEN,
                                "never_seen_combinations": list(moved.uns["pysave"]["never_seen_combinations"])},
        "genes": list(model.genes),
        "tolerance": 1e-4,
    }


def write_expectations(path: str) -> None:
    model = pysave.SAVE.load(path, device="cpu", verbose=False)  # expectations come from the saved model
    data = read_h5ad(os.path.join(FIXTURES, "pbmc_tiny.h5ad"))
    with open(os.path.join(HERE, "expectations", "tiny_model.json"), "w") as fh:
        json.dump(expected_outputs(model, data), fh, indent=0)


def main():
    path = os.path.join(FIXTURES, "tiny_model")
    if "--expectations-only" in sys.argv:
        # After a change of generation defaults: same saved model, new expected outputs.
        write_expectations(path)
        print("wrote expectations/tiny_model.json from the saved fixtures/tiny_model")
        return
    adata = read_h5ad(os.path.join(FIXTURES, "pbmc_tiny.h5ad"))
    pysave.SAVE.setup_anndata(adata, condition_keys=["batch", "cell_type"], batch_key="batch")
    model = pysave.SAVE(adata, verbose=False, **TINY)
    model.train(**TRAIN)
    model.save(path, overwrite=True)
    write_expectations(path)
    os.makedirs(EXTDATA, exist_ok=True)
    shutil.copy(os.path.join(FIXTURES, "pbmc_tiny.h5ad"), EXTDATA)
    shutil.rmtree(os.path.join(EXTDATA, "tiny_model"), ignore_errors=True)
    shutil.copytree(path, os.path.join(EXTDATA, "tiny_model"))
    print("wrote fixtures/tiny_model, expectations/tiny_model.json and r-package/inst/extdata copies")


if __name__ == "__main__":
    main()
