"""Files: reading inputs with clear errors, atomic writes, and the model directory.

The model directory holds ``config.json`` (registry, genes, blocks, training summary,
versions) and ``weights.safetensors`` (every tensor: network weights, block index, scalers,
latent statistics). safetensors holds raw tensors only, so loading runs no code from the
directory. Writes go to a temporary name beside the target and are renamed into place, so an
interrupted write never leaves a half file and never destroys an earlier good one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager

import numpy as np

from .errors import ModelDirectoryError, PySaveError

MODEL_FORMAT_VERSION = 1
EXCHANGE_FORMAT_VERSION = "1.0"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"


# ----------------------------------------------------------------------------- inputs
def read_anndata(path: str):
    """Read an input file by its extension: ``.rds`` (a SingleCellExperiment or Seurat v4 object,
    read through R; needs R and ``pip install 'pysave[r]'``), anything else as ``.h5ad``."""
    if os.fspath(path).lower().endswith(".rds"):
        from .rds import read_rds

        return read_rds(path)
    return read_h5ad(path)


def read_h5ad(path: str, backed: bool = False):
    """Read an .h5ad file, turning the usual failures into errors that say what to do."""
    import anndata as ad
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise PySaveError(f"input file {path!r} does not exist; check the path.")
    if os.path.isdir(path):
        raise PySaveError(f"{path!r} is a folder, not an .h5ad file.")
    if not h5py.is_hdf5(path):
        raise PySaveError(
            f"{path!r} is not an .h5ad (HDF5) file; write your data with anndata.AnnData.write_h5ad, "
            "or from R with saveR::WriteH5AD (.rds files are read when named *.rds; zarr, loom and csv must be converted first)."
        )
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as err:  # noqa: BLE001 - anything anndata cannot parse is a bad file
        raise PySaveError(f"could not read {path!r} as AnnData ({type(err).__name__}: {err}); the file may be truncated or not an AnnData file.") from err


def check_output_path(path: str, overwrite: bool, inputs: tuple[str, ...] = ()) -> str:
    """Refuse to replace an existing output unless asked, and never replace an input."""
    path = os.fspath(path)
    for inp in inputs:
        if inp and os.path.exists(inp) and os.path.exists(path) and os.path.samefile(inp, path):
            raise PySaveError(f"output {path!r} is also an input; choose another output path (inputs are never overwritten).")
    if os.path.exists(path) and not overwrite:
        raise PySaveError(f"output {path!r} already exists; choose another path or pass --overwrite (Python: overwrite=True).")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PySaveError(f"the folder of output {path!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise PySaveError(f"cannot write into {parent!r} (permission denied); choose a writable output folder.")
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only be
    read by setting it, which other threads would see for a moment)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def as_if_created(path: str) -> str:
    """Give ``path`` (a file, or a folder and everything in it) the mode that a plain open() or
    mkdir() would have given it under the user's umask. The temporary files and folders behind
    atomic writes are private (0600 / 0700), and a model or report left that way cannot be read
    by the user's group on a shared cluster."""
    mask = _umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        os.chmod(path, 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)
    return path


@contextmanager
def atomic_output(path: str):
    """Yield a temporary file name beside ``path``; on success it is renamed to ``path``.

    On any error the temporary file is removed and ``path`` (maybe an earlier good file) is left
    as it was; an OSError (disk full, permissions) becomes a PySaveError that says so. The
    temporary name keeps ``path``'s extension, for writers that choose a format by it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(as_if_created(tmp), path)
    except OSError as err:
        raise PySaveError(f"could not write {path!r}: {err.strerror or err}; nothing was written there.") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plain_strings(frame):
    """``frame`` with pandas' string dtype (the default from pandas 3, or pandas 2 with
    ``future.infer_string``) in its index and columns turned into object: anndata writes that
    dtype only when opted in, and readers before anndata 0.11 (R's among them) cannot read it.
    ``frame`` itself is returned when it holds none."""
    import pandas as pd

    if not (isinstance(frame.index.dtype, pd.StringDtype) or any(isinstance(t, pd.StringDtype) for t in frame.dtypes)):
        return frame
    out = frame.copy(deep=False)
    if isinstance(out.index.dtype, pd.StringDtype):
        out.index = out.index.astype(object)
    for column in out.columns:
        if isinstance(out[column].dtype, pd.StringDtype):
            out[column] = out[column].astype(object)
    return out


def write_h5ad(adata, path: str, overwrite: bool = False, inputs: tuple[str, ...] = ()) -> str:
    """Write ``adata`` atomically: to a temporary file beside ``path``, then rename. String
    columns are written as plain strings (``plain_strings``); ``adata`` itself keeps its dtypes."""
    path = check_output_path(path, overwrite, inputs)
    obs, var = adata.obs, adata.var
    plain_obs, plain_var = plain_strings(obs), plain_strings(var)
    swap = plain_obs is not obs or plain_var is not var  # else adata is written as given
    try:
        if swap:
            adata.obs, adata.var = plain_obs, plain_var
        with atomic_output(path) as tmp:
            adata.write_h5ad(tmp)
    finally:
        if swap:
            adata.obs, adata.var = obs, var
    return path


class H5adStream:
    """Write a dense-X .h5ad row chunk by row chunk, so memory does not grow with the cells.

    Rows go into a temporary file beside ``path``; ``finish`` writes obs/var/uns and renames
    it into place. Leaving the ``with`` block without ``finish`` (an error) removes the file.
    """

    def __init__(self, path: str, n_obs: int, var_names, obsm_dims: dict | None = None,
                 overwrite: bool = False, inputs: tuple[str, ...] = ()):
        import h5py

        self.path = check_output_path(path, overwrite, inputs)
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=folder)
        os.close(fd)
        self.var_names = list(var_names)
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        chunk = (max(1, min(1024, n_obs)), len(self.var_names))
        self.X = self.file.create_dataset("X", shape=(n_obs, len(self.var_names)), dtype="float32", chunks=chunk)
        self.X.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        obsm = self.file.create_group("obsm")
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        self.obsm = {}
        for key, dim in (obsm_dims or {}).items():
            self.obsm[key] = obsm.create_dataset(key, shape=(n_obs, dim), dtype="float32")
            self.obsm[key].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

    def write_rows(self, start: int, X: np.ndarray, obsm: dict | None = None) -> None:
        stop = start + X.shape[0]
        self.X[start:stop] = X
        for key, values in (obsm or {}).items():
            self.obsm[key][start:stop] = values

    def finish(self, obs, uns: dict) -> str:
        import pandas as pd
        from anndata.io import write_elem

        write_elem(self.file, "obs", plain_strings(obs))
        write_elem(self.file, "var", plain_strings(pd.DataFrame(index=pd.Index(self.var_names))))
        write_elem(self.file, "uns", uns)
        for key in ("layers", "obsp", "varm", "varp"):
            write_elem(self.file, key, {})
        self.file.close()
        os.replace(as_if_created(self.tmp), self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.file:
            self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
        if isinstance(exc, OSError):
            raise PySaveError(f"could not write {self.path!r}: {exc.strerror or exc}; nothing was written there.") from exc
        return False


# ----------------------------------------------------------------------------- model directory
@contextmanager
def atomic_folder(path: str, what: str = "folder", merge: bool = False):
    """Yield a temporary folder beside ``path`` to fill; on success it takes ``path``'s place.

    An existing ``path`` is replaced whole, or with ``merge`` only the files the new folder
    holds are replaced (anything else in it is left alone). On any error the temporary folder is
    removed and ``path`` is left as it was; an OSError (disk full, permissions) becomes a
    PySaveError that says so. Callers check beforehand whether ``path`` may be replaced.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        as_if_created(tmp)
        if not os.path.exists(path):
            os.replace(tmp, path)
        elif merge:
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(path, name))
        else:
            old = path.rstrip("/") + ".old-" + os.path.basename(tmp)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise PySaveError(f"could not write {what} {path!r}: {err.strerror or err}; nothing was changed there.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_model_dir(path: str, config: dict, tensors: dict, overwrite: bool = False) -> str:
    from safetensors.torch import save_file

    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise PySaveError(f"model directory {path!r} already exists; choose another path or pass --overwrite (Python: overwrite=True).")
    with atomic_folder(path, "model directory") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.path.join(tmp, WEIGHTS_NAME))
        with open(os.path.join(tmp, CONFIG_NAME), "w") as fh:
            json.dump(json_ready(config, nonfinite="tag"), fh, indent=1, allow_nan=False)
    return path


def load_model_dir(path: str) -> tuple[dict, dict]:
    """Read config and tensors; every failure is a :class:`ModelDirectoryError` saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelDirectoryError(f"model directory {path!r} does not exist (train one with `pysave train`).")
    config_path, weights_path = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    for f in (config_path, weights_path):
        if not os.path.exists(f):
            raise ModelDirectoryError(f"model directory {path!r} is incomplete: {os.path.basename(f)} is missing; retrain or copy the whole folder again.")
    try:
        with open(config_path) as fh:
            config = json.load(fh, object_hook=_untag_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelDirectoryError(f"{config_path!r} is corrupted ({err}); retrain or restore the model directory.") from err
    if not isinstance(config, dict) or "format_version" not in config:
        raise ModelDirectoryError(f"{config_path!r} is not a pysave model config; retrain or restore the model directory.")
    version = config["format_version"]
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise ModelDirectoryError(
            f"model directory {path!r} has format version {version}, newer than this pysave reads "
            f"({MODEL_FORMAT_VERSION}); upgrade pysave (pip install -U pysave)."
        )
    try:
        tensors = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirectoryError(f"{weights_path!r} is corrupted ({err}); retrain or restore the model directory.") from err
    return config, tensors


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_STATE = "state.json"


def _split_tensors(obj, tensors: dict, prefix: str):
    """Nested dicts/lists with tensors -> JSON-able structure + a flat tensor dict (no pickle)."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split_tensors(k, tensors, f"{prefix}.k{i}") if not isinstance(k, (str, int)) else k,
                              _split_tensors(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _join_tensors(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dict__" in obj:
            return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        return {k: _join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str, state: dict) -> None:
    """Write a training checkpoint into the folder ``path``; safe against a kill at any moment.

    The tensors go to a new file first; then ``state.json``, which names that file, is
    replaced atomically; only then are older tensor files removed. Whatever instant the process
    dies, ``state.json`` points at a complete tensor file.
    """
    import time

    from safetensors.torch import save_file

    tensors: dict = {}
    meta = _split_tensors(state, tensors, "t")
    os.makedirs(path, exist_ok=True)
    name = f"tensors-{time.time_ns()}.safetensors"
    tmp = os.path.join(path, f".{name}.tmp")
    save_file(tensors, tmp)
    os.replace(as_if_created(tmp), os.path.join(path, name))
    write_json_atomic(os.path.join(path, CHECKPOINT_STATE), {"tensors_file": name, "state": meta})
    for old in os.listdir(path):
        if old.startswith("tensors-") and old != name:
            os.remove(os.path.join(path, old))


def load_checkpoint(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state_path = os.path.join(path, CHECKPOINT_STATE)
    if not os.path.exists(state_path):
        raise PySaveError(f"no training checkpoint in {path!r}; train without --resume (or check the --out path).")
    try:
        with open(state_path) as fh:
            meta = json.load(fh)
        tensors = load_file(os.path.join(path, meta["tensors_file"]), device="cpu")
    except (json.JSONDecodeError, KeyError, SafetensorError, OSError) as err:
        raise PySaveError(f"the checkpoint in {path!r} is corrupted ({err}); delete it and train without --resume.") from err
    return _join_tensors(meta["state"], tensors)


def write_json_atomic(path: str, obj) -> None:
    """Strict JSON (NaN and inf as null) to a temporary file beside ``path``, then renamed into place."""
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        json.dump(json_ready(obj), fh, indent=1, allow_nan=False)


def json_ready(obj, nonfinite: str = "null"):
    """A copy of ``obj`` that strict JSON parsers read. JSON has no NaN or inf, yet Python writes
    them as bare words, which jsonlite (saveR), jq and browsers reject. ``nonfinite="null"`` (reports:
    a mean over no group is "not computed") or ``"tag"`` (``{"__float__": "inf"}``, read back as the
    float by `load_model_dir` and saveR's ``.nonfinite``). numpy scalars and arrays become plain values."""
    if isinstance(obj, (float, np.floating)):
        if np.isfinite(obj):
            return float(obj)
        return None if nonfinite == "null" else {"__float__": repr(float(obj))}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist(), nonfinite)
    if isinstance(obj, dict):
        return {k: json_ready(v, nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, nonfinite) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def _untag_float(obj: dict):
    return float(obj["__float__"]) if set(obj) == {"__float__"} else obj


def write_text_atomic(path: str, text: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


