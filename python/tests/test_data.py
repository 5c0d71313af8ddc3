import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pysave import data as D
from pysave.errors import PySaveError


def test_setup_records_categories_and_mask(pbmc_small):
    reg = D.setup_anndata(pbmc_small, ["batch", "cell_type"], batch_key="batch")
    assert reg == D.get_registry(pbmc_small)
    assert set(reg["categories"]["batch"]) == set(pbmc_small.obs["batch"].astype(str))
    codes = D.encode_conditions(pbmc_small.obs, reg)
    assert codes.shape == (pbmc_small.n_obs, 2)
    assert codes[:, 0].max() < len(reg["categories"]["batch"])
    masked = D.encode_conditions(pbmc_small.obs.drop(columns=["batch"]), reg, allow_missing=True)
    assert (masked[:, 0] == len(reg["categories"]["batch"])).all()


def test_categorical_order_kept_and_numeric_columns_are_categories(pbmc_small):
    pbmc_small.obs["grade"] = np.where(np.arange(pbmc_small.n_obs) % 2, 10, 2)
    pbmc_small.obs["ordered"] = pd.Categorical(["z"] * 200 + ["a"] * 200, categories=["z", "a", "unused"])
    reg = D.setup_anndata(pbmc_small, ["grade", "ordered"])
    assert reg["categories"]["grade"] == ["10", "2"]
    assert reg["categories"]["ordered"] == ["z", "a"]  # unused levels dropped, order kept


@pytest.mark.parametrize("bad, message", [
    (["nope"], "not a column of adata.obs"),
    ([], "no condition keys"),
    (["batch", "batch"], "repeated"),
])
def test_setup_rejects_bad_keys(pbmc_small, bad, message):
    with pytest.raises(PySaveError, match=message):
        D.setup_anndata(pbmc_small, bad)


def test_setup_rejects_missing_condition_values(pbmc_small):
    pbmc_small.obs["cell_type"] = pbmc_small.obs["cell_type"].astype(object)
    pbmc_small.obs.iloc[3, pbmc_small.obs.columns.get_loc("cell_type")] = None
    with pytest.raises(PySaveError, match="1 missing value"):
        D.setup_anndata(pbmc_small, ["cell_type"])


def test_unknown_value_lists_known_ones(pbmc_small):
    reg = D.setup_anndata(pbmc_small, ["cell_type"])
    obs = pd.DataFrame({"cell_type": ["B", "Martian"]})
    with pytest.raises(PySaveError, match="Martian.*knows: .*B"):
        D.encode_conditions(obs, reg)


@pytest.mark.parametrize("value, message", [
    (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative"), (0.5, "non-integer"),
])
def test_check_counts_rejects_bad_values(value, message):
    X = sp.csr_matrix(np.array([[1.0, 2.0], [3.0, 4.0]]))
    X.data[1] = value
    with pytest.raises(PySaveError, match=message):
        D.check_counts(X)


def test_lognormalized_input_gets_a_hint(pbmc_small):
    X = pbmc_small.X.copy()
    X.data = np.log1p(X.data * 1.3)
    with pytest.raises(PySaveError, match="look log-normalized.*layer='counts'"):
        D.check_counts(X)


def test_zero_count_cells_are_rejected():
    with pytest.raises(PySaveError, match="1 cell\\(s\\) have zero total counts"):
        D.check_counts(sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]])))


def test_preprocess_matches_scanpy_and_is_in_unit_interval(pbmc_small):
    import scanpy as sc

    reg = D.setup_anndata(pbmc_small, ["batch"], batch_key="batch")
    codes = D.encode_conditions(pbmc_small.obs, reg)[:, 0]
    library = D.check_counts(pbmc_small.X)
    scalers = D.fit_scalers(pbmc_small.X, library, codes, len(reg["categories"]["batch"]) + 1)
    x01 = D.preprocess(pbmc_small.X, library, scalers, codes)
    assert sp.issparse(x01) and x01.min() >= 0 and x01.max() <= 1.0 + 1e-6
    ref = pbmc_small.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    back = x01.toarray() * scalers.values[codes]
    np.testing.assert_allclose(back, ref.X.toarray(), rtol=1e-5, atol=1e-5)
    # Per-batch max-abs: every expressed gene reaches exactly 1 in some cell of each batch.
    for b in range(len(reg["categories"]["batch"])):
        rows = x01[codes == b].toarray()
        expressed = rows.max(0) > 0
        np.testing.assert_allclose(rows.max(0)[expressed], 1.0, rtol=1e-5)
    # The global row is the max over batches.
    np.testing.assert_allclose(scalers.values[-1], scalers.values[:-1].max(0))


def test_normalize_log_profiles_is_scanpys_normalize_total_on_the_profile():
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(0)
    X = np.log1p(rng.gamma(0.5, 2.0, size=(9, 40))).astype(np.float32)
    X[3] = 0  # a cell with nothing stays nothing
    ref = ad.AnnData(np.expm1(X))
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    out = D.normalize_log_profiles(X.copy(), chunk=4)
    np.testing.assert_allclose(out, ref.X, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and not out[3].any()
    np.testing.assert_allclose(D.normalize_log_profiles(out.copy()), out, rtol=1e-5, atol=1e-5)  # idempotent


def test_dense_and_sparse_inputs_agree(pbmc_small):
    library = D.check_counts(pbmc_small.X)
    idx = np.zeros(pbmc_small.n_obs, dtype=np.int64)
    s1 = D.fit_scalers(pbmc_small.X, library, idx, 1)
    s2 = D.fit_scalers(pbmc_small.X.toarray(), library, idx, 1)
    np.testing.assert_allclose(s1.values, s2.values)
    a = D.preprocess(pbmc_small.X, library, s1, idx).toarray()
    b = D.preprocess(pbmc_small.X.toarray(), library, s2, idx).toarray()
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_align_genes_reorders_and_reports_missing():
    idx = D.align_genes(["c", "a", "b", "extra"], ["a", "b", "c"])
    assert idx.tolist() == [1, 2, 0]
    with pytest.raises(PySaveError, match="1 of the model's 3 genes are missing"):
        D.align_genes(["a", "b"], ["a", "b", "c"])
    with pytest.raises(PySaveError, match="not unique"):
        D.align_genes(["a", "a", "b", "c"], ["a", "b", "c"])


def test_empty_data_is_rejected(pbmc_small):
    with pytest.raises(PySaveError, match="zero cells"):
        D.validate_shape(pbmc_small[:0])
    with pytest.raises(PySaveError, match="zero genes"):
        D.validate_shape(pbmc_small[:, :0])


def test_distinct_rows_is_numpys_unique_over_rows():
    """distinct_rows encodes each row of codes as one integer; the distinct rows, their order, each
    row's index and the counts must be np.unique(axis=0)'s, including where it falls back to it
    (negative codes, floats, keys past int64) and for one column, one row and no rows."""
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, hi, shape) for shape, hi in (((2000, 2), 5), ((300, 1), 3), ((300, 3), 60), ((1, 2), 4),
                                                          ((500, 4), 2))]
    cases += [rng.integers(-2, 3, (300, 2)), rng.integers(0, 3, (300, 2)).astype(np.float64),
              rng.integers(0, 2**40, (300, 2)), np.zeros((0, 2), dtype=np.int64)]
    for codes in cases:
        want = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        got = D.distinct_rows(codes, return_counts=True)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], np.asarray(want[1]).reshape(-1))
        assert np.array_equal(got[2], want[2]), codes.shape
        distinct, inverse = D.distinct_rows(codes)
        assert np.array_equal(distinct, want[0]) and np.array_equal(inverse, np.asarray(want[1]).reshape(-1))
