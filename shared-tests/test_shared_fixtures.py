"""Python side of the shared fixtures: read them through pysave and match the expectations."""
import json
import os
import warnings

import numpy as np
import pytest

import pysave
from pysave.io import read_h5ad

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tiny():
    return read_h5ad(os.path.join(HERE, "fixtures", "pbmc_tiny.h5ad"))


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(HERE, "expectations", "pbmc_tiny.json")) as fh:
        return json.load(fh)


def test_fixture_reads_exactly(tiny, expected):
    assert tiny.shape == (expected["n_obs"], expected["n_vars"])
    assert tiny.obs_names[:3].tolist() == expected["obs_names_first"]
    assert tiny.obs_names[-1] == expected["obs_names_last"]
    assert tiny.var_names.tolist() == expected["var_names"]
    for key, cats in expected["obs_categories"].items():
        assert tiny.obs[key].cat.categories.tolist() == cats
        counts = {str(c): int(n) for c, n in tiny.obs[key].value_counts(sort=False).items()}
        assert counts == expected["obs_counts"][key]
    X = tiny.X.tocsr()
    assert X.nnz == expected["nnz"]
    assert float(X.sum()) == expected["total"]
    np.testing.assert_array_equal(np.asarray(X.sum(0)).ravel(), expected["column_sums"])


def test_registry_keeps_the_fixture_category_order(tiny, expected):
    adata = tiny.copy()
    reg = pysave.SAVE.setup_anndata(adata, ["batch", "cell_type"], batch_key="batch")
    # Only levels present in the data are kept, in the stored order.
    present = [c for c in expected["obs_categories"]["batch"] if expected["obs_counts"]["batch"][c] > 0]
    assert reg["categories"]["batch"] == present


# ----------------------------------------------------------------------------- tiny model fixture
# fixtures/tiny_model was trained by make_model_fixture.py; the R suite compares the same numbers.
@pytest.fixture(scope="module")
def tiny_model_expected():
    with open(os.path.join(HERE, "expectations", "tiny_model.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def tiny_model():
    return pysave.SAVE.load(os.path.join(HERE, "fixtures", "tiny_model"), device="cpu", verbose=False)


def test_tiny_model_latent_matches_expectation(tiny_model, tiny, tiny_model_expected):
    latent = tiny_model.get_latent_representation(tiny.copy(), key_added=None)
    np.testing.assert_allclose(latent, tiny_model_expected["latent"], atol=tiny_model_expected["tolerance"], rtol=0)


def test_tiny_model_generation_matches_expectation(tiny_model, tiny_model_expected):
    spec = tiny_model_expected["generate"]
    gen = tiny_model.generate(spec["conditions"], n_cells=spec["n_cells"], seed=spec["seed"])
    assert gen.var_names.tolist() == tiny_model_expected["genes"]
    np.testing.assert_allclose(gen.X, tiny_model_expected["generated_X"], atol=tiny_model_expected["tolerance"], rtol=0)
    np.testing.assert_allclose(gen.obsm["X_save"], tiny_model_expected["generated_latent"],
                               atol=tiny_model_expected["tolerance"], rtol=0)


def test_tiny_model_calibrated_generation_matches_expectation(tiny_model, tiny_model_expected):
    spec = tiny_model_expected["generate_seen"]
    gen = tiny_model.generate(spec["conditions"], n_cells=spec["n_cells"], seed=spec["seed"])
    assert gen.uns["pysave"]["calibrated"] and gen.uns["pysave"]["calibrated_cells"] == spec["n_cells"]
    for key in ("spread_calibrated_cells", "spread_pilot_cells", "spread_min_cells", "spread_max_factor"):
        assert gen.uns["pysave"][key] == spec[key], key
    np.testing.assert_allclose(gen.X, tiny_model_expected["generated_seen_X"], atol=tiny_model_expected["tolerance"], rtol=0)
    raw = tiny_model.generate(spec["conditions"], n_cells=spec["n_cells"], seed=spec["seed"], calibrate=False)
    assert np.abs(raw.X - gen.X).max() > 10 * tiny_model_expected["tolerance"]


def test_tiny_model_never_seen_combination_warns_with_a_shift_from(tiny_model, tiny_model_expected):
    """10x_3prime_v2 x NK has no fixture cell: generation warns and names the shift_from whose shift
    is learned from the most strata (batch from 10x_5prime: 3 cell types with 3+ cells in both
    batches, against 1 batch for any change of cell type); following it warns no more."""
    spec = tiny_model_expected["generate_never_seen"]
    (key, value), = spec["shift_from"].items()
    with pytest.warns(pysave.PySaveWarning) as caught:
        gen = tiny_model.generate(spec["conditions"], n_cells=spec["n_cells"], seed=spec["seed"])
    message = " ".join(str(w.message) for w in caught)
    assert f"never seen in training ({spec['never_seen_combinations'][0]})" in message
    assert f"shift_from {key}={value} (Python shift_from={{{key!r}: {value!r}}}" in message
    assert list(gen.uns["pysave"]["never_seen_combinations"]) == spec["never_seen_combinations"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = tiny_model.generate(spec["conditions"], n_cells=spec["n_cells"], seed=spec["seed"],
                                    shift_from=spec["shift_from"])
        seen = tiny_model.generate(tiny_model_expected["generate_seen"]["conditions"], n_cells=2)
    assert "never_seen_combinations" not in moved.uns["pysave"] and "never_seen_combinations" not in seen.uns["pysave"]
    assert list(moved.uns["pysave"]["shift_strata"].values()) == [3]


def test_tiny_model_default_guidance_weighs_rows_by_their_combination(tiny_model, tiny_model_expected):
    """A table of a seen and a never-seen combination at the default guidance: the cells and the
    weights recorded are the ones Python wrote (1.5 for the seen rows, 1 for the never-seen ones)."""
    import pandas as pd

    spec = tiny_model_expected["generate_mixed"]
    with pytest.warns(pysave.PySaveWarning, match="never seen in training"):
        gen = tiny_model.generate_like(pd.DataFrame(spec["table"]), seed=spec["seed"])
    np.testing.assert_allclose(gen.X, tiny_model_expected["generated_mixed_X"], atol=tiny_model_expected["tolerance"], rtol=0)
    recorded = {k: gen.uns["pysave"][k] for k in ("guidance", "guidance_seen", "guidance_never_seen", "guidance_never_seen_cells")}
    assert recorded == {k: spec[k] for k in recorded}


def test_tiny_model_correction_over_all_batches_matches_expectation(tiny_model, tiny, tiny_model_expected):
    corrected = tiny_model.correct(tiny.copy(), layer_added=None, **tiny_model_expected["correct"])
    np.testing.assert_allclose(corrected, tiny_model_expected["corrected_X"], atol=tiny_model_expected["tolerance"], rtol=0)


def test_tiny_model_transfer_input_plus_change_matches_expectation(tiny_model, tiny, tiny_model_expected):
    spec = tiny_model_expected["transfer"]
    moved = tiny_model.transfer(tiny.copy(), **spec)
    np.testing.assert_allclose(moved.X, tiny_model_expected["transferred_X"], atol=tiny_model_expected["tolerance"], rtol=0)


def test_tiny_model_flow_transfer_to_never_seen_combinations_warns(tiny_model, tiny, tiny_model_expected):
    """Moving every cell to 10x_3prime_v2 through the flow reaches types with no 10x_3prime_v2 training
    cell: a warning names them and points to via='auto', and the provenance lists them; the
    default route (the latent shift) is not warned about."""
    spec = tiny_model_expected["transfer_never_seen"]
    names = spec["never_seen_combinations"]
    with pytest.warns(pysave.PySaveWarning) as caught:
        moved = tiny_model.transfer(tiny.copy(), spec["target"], via=spec["via"], n_steps=spec["n_steps"])
    message = " ".join(str(w.message) for w in caught)
    assert f"{len(names)} target combination(s) were never seen in training ({'; '.join(names)})" in message
    assert "The default route, via='auto' (R via = \"auto\", CLI --via auto)" in message
    assert list(moved.uns["pysave"]["never_seen_combinations"]) == names and moved.uns["pysave"]["via"] == "flow"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shifted = tiny_model.transfer(tiny.copy(), spec["target"])
    assert shifted.uns["pysave"]["via"] == "shift" and "never_seen_combinations" not in shifted.uns["pysave"]


def test_r_package_copies_of_fixtures_are_identical():
    import filecmp

    extdata = os.path.join(HERE, "..", "r-package", "inst", "extdata")
    assert filecmp.cmp(os.path.join(HERE, "fixtures", "pbmc_tiny.h5ad"), os.path.join(extdata, "pbmc_tiny.h5ad"), shallow=False)
    for name in ("config.json", "weights.safetensors"):
        assert filecmp.cmp(os.path.join(HERE, "fixtures", "tiny_model", name),
                           os.path.join(extdata, "tiny_model", name), shallow=False), f"re-run make_model_fixture.py ({name})"


# ----------------------------------------------------------------------------- posterior collapse
def test_posterior_collapse_is_warned_and_recorded(tiny):
    with open(os.path.join(HERE, "expectations", "posterior_collapse.json")) as fh:
        spec = json.load(fh)
    active = {}
    for name in ("collapsing", "healthy"):
        adata = tiny.copy()
        pysave.SAVE.setup_anndata(adata, spec["conditions"])
        model = pysave.SAVE(adata, verbose=False, kl_weight=spec[f"{name}_kl_weight"], **spec["params"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.train(**spec["train"], progress=False, device="cpu")
        said = [str(w.message) for w in caught if spec["warning"] in str(w.message)]
        assert len(said) == (1 if name == "collapsing" else 0), said
        # attributed to the caller's train() line, not to a line inside pysave
        assert all(os.path.samefile(w.filename, __file__) for w in caught if spec["warning"] in str(w.message))
        assert all("lower kl_weight" in s for s in said)  # the message says the fix
        active[name] = model.training_summary["active_latent_dims"]
    assert active["collapsing"] <= spec["max_active_when_collapsed"]
    assert active["healthy"] >= spec["min_active_when_healthy"]
