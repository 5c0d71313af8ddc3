"""Conversion glue between saveR (R, through reticulate) and pysave.

Only conversions live here: every task is a ``pysave.SAVE`` method called from R, the same
methods the ``pysave`` CLI calls. Everything returned to R is a plain dict of numpy arrays,
Python lists of strings and scalars, which R converts explicitly (reticulate 1.28 cannot
convert scipy sparse matrices to dgCMatrix itself), so no Python object reaches the user.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pysave.io import json_ready  # JSON has no inf / NaN: they travel as {"__float__": "inf"}, read back by saveR's .nonfinite
from pysave.model import INTEGER_PARAMS


# ----------------------------------------------------------------------------- R -> AnnData
def _integer_valued(data: np.ndarray) -> bool:
    return data.size == 0 or bool(np.all(np.isfinite(data)) and np.all(data == np.round(data))
                                  and np.abs(data).max() < 2 ** 31)


def matrix_from_r(parts):
    """A genes x cells matrix from R -> cells x genes (CSR, integer dtype when integer-valued)."""
    if parts["kind"] == "sparse":
        n_genes, n_cells = (int(v) for v in parts["dims"])
        m = sp.csc_matrix((np.asarray(parts["x"], dtype=np.float64), np.asarray(parts["i"], dtype=np.int32),
                           np.asarray(parts["p"], dtype=np.int32)), shape=(n_genes, n_cells))
        m = m.T.tocsr()
        if _integer_valued(m.data):
            m = m.astype(np.int32)
        return m
    dense = np.asarray(parts["x"], dtype=np.float64).reshape(tuple(int(v) for v in parts["dims"]), order="F").T
    return np.ascontiguousarray(dense)


def _column_from_r(col, n):
    kind = col["kind"]
    if kind == "factor":
        codes = np.asarray(col["codes"], dtype=np.int64).reshape(-1) - 1  # R NA arrives as -1 after the shift below
        codes = np.where(np.asarray(col["na"], dtype=bool).reshape(-1), -1, codes)
        levels = [str(v) for v in _as_list(col["levels"])]
        return pd.Categorical.from_codes(codes, categories=levels, ordered=bool(col["ordered"]))
    na = np.asarray(col["na"], dtype=bool).reshape(-1)
    if kind == "character":
        values = np.asarray(_as_list(col["values"]), dtype=object).reshape(-1)
        values[na] = None
        return values
    if kind == "logical":
        values = np.asarray(col["values"], dtype=bool).reshape(-1)
        return pd.array(np.where(na, None, values), dtype="boolean") if na.any() else values
    if kind == "integer":
        values = np.asarray(col["values"], dtype=np.float64).reshape(-1)
        if na.any():
            return pd.array(np.where(na, None, values.astype(np.int64)).tolist(), dtype="Int32")
        return values.astype(np.int32)
    values = np.asarray(col["values"], dtype=np.float64).reshape(-1)
    values[na] = np.nan
    return values


def _as_list(x):
    if isinstance(x, str):
        return [x]
    if isinstance(x, np.ndarray):
        return x.reshape(-1).tolist()
    return list(x)


def make_anndata(X, obs_columns, obs_names, var_names, layers=None, obsm=None, uns_json=None):
    """Build an AnnData from R parts (see R/convert.R)."""
    import anndata as ad

    obs_names = [str(v) for v in _as_list(obs_names)]
    var_names = [str(v) for v in _as_list(var_names)]
    obs = pd.DataFrame(index=pd.Index(obs_names))
    for name, col in (obs_columns or {}).items():
        obs[str(name)] = _column_from_r(col, len(obs_names))
    adata = ad.AnnData(X=matrix_from_r(X), obs=obs, var=pd.DataFrame(index=pd.Index(var_names)))
    for name, parts in (layers or {}).items():
        adata.layers[str(name)] = matrix_from_r(parts)
    for name, arr in (obsm or {}).items():
        adata.obsm[str(name)] = np.asarray(arr, dtype=np.float64).reshape(len(obs_names), -1, order="C") if np.ndim(arr) == 2 else np.asarray(arr, dtype=np.float64).reshape(len(obs_names), -1)
    if uns_json:
        adata.uns["saveR"] = {"json": str(uns_json)}
    return adata


# ----------------------------------------------------------------------------- AnnData -> R
def matrix_to_r(m):
    """cells x genes matrix -> parts of a genes x cells R matrix (sparse stays sparse)."""
    if sp.issparse(m):
        csc = sp.csc_matrix(m).T.tocsc() if False else sp.csr_matrix(m).T.tocsc()  # genes x cells
        csc.sort_indices()
        integer = _integer_valued(csc.data)
        return {"kind": "sparse", "i": csc.indices.astype(np.int32), "p": csc.indptr.astype(np.int32),
                "x": csc.data.astype(np.float64), "dims": [int(csc.shape[0]), int(csc.shape[1])],
                "integer": integer}
    arr = np.asarray(m)
    return {"kind": "dense", "x": np.asfortranarray(arr.T.astype(np.float64)), "dims": [int(arr.shape[1]), int(arr.shape[0])],
            "integer": _integer_valued(arr.reshape(-1))}


def _column_to_r(series: pd.Series):
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy().astype(np.int32)
        return {"kind": "factor", "codes": codes + 1, "na": codes < 0,
                "levels": [str(c) for c in series.cat.categories], "ordered": bool(series.cat.ordered)}
    na = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(series.dtype):
        return {"kind": "logical", "values": series.fillna(False).to_numpy(dtype=bool), "na": na}
    if pd.api.types.is_integer_dtype(series.dtype):
        values = series.fillna(0).to_numpy(dtype=np.float64)
        small = values.size == 0 or np.abs(values).max() < 2 ** 31
        return {"kind": "integer" if small else "double", "values": values, "na": na}
    if pd.api.types.is_numeric_dtype(series.dtype):
        return {"kind": "double", "values": series.to_numpy(dtype=np.float64, na_value=np.nan), "na": na}
    return {"kind": "character", "values": ["" if m else str(v) for v, m in zip(series.tolist(), na)], "na": na}


def anndata_to_r(adata):
    """Every part of an AnnData that R keeps, as plain arrays and lists."""
    out = {
        "obs_names": [str(v) for v in adata.obs_names],
        "var_names": [str(v) for v in adata.var_names],
        "X": matrix_to_r(adata.X),
        "obs": {str(k): _column_to_r(adata.obs[k]) for k in adata.obs.columns},
        "layers": {str(k): matrix_to_r(v) for k, v in adata.layers.items()},
        "obsm": {str(k): np.ascontiguousarray(np.asarray(v, dtype=np.float64)) for k, v in adata.obsm.items()
                 if not isinstance(v, pd.DataFrame)},
        "uns_pysave": json.dumps(json_ready(adata.uns.get("pysave", {}), nonfinite="tag")),
        "uns_saveR": str(adata.uns.get("saveR", {}).get("json", "")) if isinstance(adata.uns.get("saveR"), dict) else "",
    }
    return out


# ----------------------------------------------------------------------------- files and models
def read_h5ad(path):
    from pysave.io import read_anndata

    return read_anndata(str(path))


def write_h5ad(adata, path, overwrite=False):
    from pysave.io import write_h5ad as _write

    return _write(adata, str(path), overwrite=bool(overwrite))


def model_config(path):
    """config.json of a model directory (checked by pysave), as a JSON string."""
    from pysave.io import load_model_dir

    config, _ = load_model_dir(str(path))
    return json.dumps(json_ready(config, nonfinite="tag"))


def to_python_values(values):
    """R values arrive as numpy scalars or 1-element arrays; give the engine plain Python."""
    out = {}
    for key, value in dict(values).items():
        if isinstance(value, np.ndarray):
            value = value.reshape(-1).tolist()
            value = value[0] if len(value) == 1 else value
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value.is_integer() and key in INTEGER_ARGS:
            value = int(value)
        out[str(key)] = value
    return out


# The engine's integer model parameters come from pysave itself, so a new one needs no change here;
# training and sampling arguments are listed by hand.
INTEGER_ARGS = set(INTEGER_PARAMS) | {
    "max_epochs", "flow_epochs", "batch_size", "warmup_epochs",
    "early_stopping_patience", "n_steps", "n_cells", "checkpoint_every", "chunk_size", "n_degs", "n_hvg", "n_pcs"}


def conditions_table(columns, n_cells):
    """A generate_like table from R: condition columns (strings, None = masked) + n_cells."""
    table = pd.DataFrame({str(k): [None if v is None else str(v) for v in _as_list(vals)] for k, vals in dict(columns).items()})
    table["n_cells"] = np.asarray(n_cells, dtype=np.int64).reshape(-1)
    return table


def table_to_r(frame: pd.DataFrame):
    frame = frame.reset_index()
    return {str(k): _column_to_r(frame[k]) for k in frame.columns}


def versions():
    import platform
    import sys
    from importlib.metadata import version

    out = {"python": platform.python_version(), "executable": sys.executable}
    for pkg in ("pysave", "torch", "numpy", "scipy", "anndata"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = "not installed"
    return out


def evaluate(real, generated, kwargs):
    """pysave.evaluate(real, generated, **kwargs) for EvaluateSAVE(): the table's columns and row
    names, the summary as JSON, and the plot files written."""
    import json

    from pysave.evaluation import evaluate as run

    table, summary, files = run(real, generated, **to_python_values(kwargs or {}))
    # plain columns, not a DataFrame: reticulate's DataFrame conversion warns under pandas 2
    columns = {str(c): (table[c].to_numpy() if table[c].dtype.kind in "biuf" else [str(v) for v in table[c]]) for c in table.columns}
    return {"columns": columns, "rownames": [str(i) for i in table.index], "summary_json": json.dumps(json_ready(summary, nonfinite="tag")),
            "files": list(files)}


def expression_pca(matrix, seed):
    """EvaluateSAVE(layers = ...) for expression beside an object's main assay (a Seurat assay,
    an SCE altExp): the same 50-PC PCA as `pysave evaluate --layer-embedding` (counts are
    log-normalized first, log-normalized values used as they are)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from pysave.metrics import unintegrated_pca

    # float64 as R holds it and as the PCA reads a layer, so that the same values score the same
    # by either route: PCs that differ in the fifth digit are enough to move one label's kBET on
    # the bundled PBMC data (Mono_CD16, 60 cells: 0.85 or 0.07; scIB Total by 0.009).
    X = sp.csr_matrix(matrix, dtype=np.float64) if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float64)
    return unintegrated_pca(ad.AnnData(X), seed=int(seed))


def call(fn, args, kwargs):
    """fn(*args, **kwargs) with R values turned into plain Python (integers where the engine counts)."""
    return fn(*list(args or []), **to_python_values(kwargs or {}))


_RECORDERS: list = []


def start_warnings():
    """Start recording Python warnings (saveR's .pycall, around each engine call; recordings nest)."""
    import warnings

    from pysave.errors import PySaveWarning

    recorder = warnings.catch_warnings(record=True)
    _RECORDERS.append((recorder, recorder.__enter__()))
    # pysave's own warnings every time, not once per code location: each R call should hear them
    warnings.simplefilter("always", PySaveWarning)


def stop_warnings() -> list:
    """Stop the last recording. pysave's own warnings (PySaveWarning) are returned, once each,
    for saveR to raise as R warnings; any other warning is printed as Python would print it."""
    import warnings

    from pysave.errors import PySaveWarning

    if not _RECORDERS:
        return []
    recorder, caught = _RECORDERS.pop()
    recorder.__exit__(None, None, None)
    ours = []
    for w in caught:
        if issubclass(w.category, PySaveWarning):
            if str(w.message) not in ours:
                ours.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return ours
