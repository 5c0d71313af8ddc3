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

import numpy as np

from .errors import ModelDirectoryError, PySaveError

MODEL_FORMAT_VERSION = 1
EXCHANGE_FORMAT_VERSION = "1.0"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"


# ----------------------------------------------------------------------------- inputs
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
            "or from R with saveR / anndata (zarr, loom, csv and .rds inputs must be converted first)."
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


def write_h5ad(adata, path: str, overwrite: bool = False, inputs: tuple[str, ...] = ()) -> str:
    """Write ``adata`` atomically: to a temporary file beside ``path``, then rename."""
    path = check_output_path(path, overwrite, inputs)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise PySaveError(f"could not write {path!r}: {err.strerror or err}; nothing was written there.") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------- model directory
def save_model_dir(path: str, config: dict, tensors: dict, overwrite: bool = False) -> str:
    from safetensors.torch import save_file

    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise PySaveError(f"model directory {path!r} already exists; choose another path or pass --overwrite (Python: overwrite=True).")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", suffix=".tmp", dir=parent)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.path.join(tmp, WEIGHTS_NAME))
        with open(os.path.join(tmp, CONFIG_NAME), "w") as fh:
            json.dump(config, fh, indent=1, default=_json_default)
        if os.path.exists(path):
            old = path.rstrip("/") + ".old-" + os.path.basename(tmp)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        raise PySaveError(f"could not write model directory {path!r}: {err.strerror or err}; nothing was changed there.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
            config = json.load(fh)
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


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in config.json")
