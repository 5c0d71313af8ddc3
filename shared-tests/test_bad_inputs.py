"""Python side of the bad-input matrix: every case of bad_inputs/cases.json through the CLI
and the Python API. A case passes when the outcome is the expected one: a PySaveError (Python) or
exit status 1 with one `Error:` line and no traceback (CLI) whose message contains the expected
fragment, or success where success is expected; and nothing the user had is changed."""
import errno
import json
import os
import pickle
import shutil

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

import pysave
from pysave.cli import main
from pysave.errors import PySaveError
from pysave.io import read_h5ad

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_inputs")
SPEC = json.load(open(os.path.join(HERE, "cases.json")))
INPUTS = os.path.join(HERE, "inputs")
TINY = dict(hidden_size=16, condition_dim=16, latent_dim=16, latent_token_size=8, n_encoder_layers=1, n_decoder_layers=1,
            n_heads=2, flow_hidden_size=16, flow_layers=1, flow_token_size=8, flow_heads=2, flow_condition_dim=16, n_blocks=4)
TINY_CLI = ["--hidden-size", "16", "--condition-dim", "16", "--latent-dim", "16", "--encoder-layers", "1",
            "--decoder-layers", "1", "--heads", "2", "--flow-hidden-size", "16", "--flow-layers", "1",
            "--flow-token-size", "8", "--flow-heads", "2", "--flow-condition-dim", "16", "--epochs", "1", "--flow-epochs", "1", "--quiet"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    adata = ad.read_h5ad(os.path.join(INPUTS, "good.h5ad"))
    pysave.SAVE.setup_anndata(adata, SPEC["default_conditions"], batch_key="batch")
    model = pysave.SAVE(adata, verbose=False, **TINY)
    model.train(max_epochs=2, flow_epochs=2, progress=False)
    path = str(tmp_path_factory.mktemp("models") / "good")
    model.save(path)
    return path


def _broken_model(good, kind, folder):
    path = os.path.join(folder, kind)
    shutil.copytree(good, path)
    weights, config = os.path.join(path, "weights.safetensors"), os.path.join(path, "config.json")
    if kind == "missing_weights":
        os.remove(weights)
    elif kind == "corrupt_weights":
        with open(weights, "r+b") as fh:
            fh.write(b"\xff" * 16)
    elif kind == "missing_config":
        os.remove(config)
    elif kind == "corrupt_config":
        open(config, "w").write('{"format_version": 1, "params": ')
    elif kind == "newer_format":
        cfg = json.load(open(config))
        cfg["format_version"] = 99
        json.dump(cfg, open(config, "w"))
    elif kind == "pickle_payload":
        with open(weights, "wb") as fh:
            pickle.dump(_Payload(os.path.join(folder, "PWNED")), fh)
    return path


EVALUATE_OPTIONS = ("task", "groups", "batch_key", "label_key", "embeddings", "condition_key", "n_pcs")


def _python(case, model_dir, tmp_path):
    options = case.get("options", {})
    src = os.path.join(INPUTS, case["input"]) if case["input"] else None
    action = case["action"]
    if action == "evaluate":
        generated = read_h5ad(os.path.join(INPUTS, options["generated"])) if "generated" in options else None
        pysave.evaluate(read_h5ad(src), generated, out=str(tmp_path / "eval"), umap=False,
                        **{k: options[k] for k in EVALUATE_OPTIONS if k in options})
        return None
    if action == "train":
        adata = read_h5ad(src)
        pysave.SAVE.setup_anndata(adata, case.get("conditions", SPEC["default_conditions"]), layer=options.get("layer"))
        params = dict(TINY)
        if "gene_embeddings" in options:
            params["gene_embeddings"] = os.path.join(INPUTS, options["gene_embeddings"])
            params["n_blocks"] = options.get("n_blocks", params["n_blocks"])
        params.update(options.get("params", {}))  # network parameters by their engine names
        model = pysave.SAVE(adata, verbose=False, **params)
        model.train(max_epochs=1, flow_epochs=1, progress=False)
        assert np.isfinite(model.generate(n_cells=2).X).all()
        return None
    model = pysave.SAVE.load(model_dir, device="cpu", verbose=False)
    if action == "generate":
        model.generate(options["set"], n_cells=3, **({"guidance": float(options["guidance"])} if "guidance" in options else {}))
    elif action == "transfer":
        model.transfer(read_h5ad(src), options["set"],
                       **{k: options[k] for k in ("via", "shift_bandwidth", "shift_neighbours") if k in options})
    elif action == "embed":
        return model.get_latent_representation(read_h5ad(src), key_added=None)
    elif action == "write":
        adata = read_h5ad(src)
        model.get_latent_representation(adata)
        out = src if case["output"] == "is_input" else str(tmp_path / "out.h5ad")
        pysave.io.write_h5ad(adata, out, overwrite=case["output"] == "disk_full", inputs=(src,))
    return None


def _cli(case, model_dir, tmp_path):
    options = case.get("options", {})
    src = os.path.join(INPUTS, case["input"]) if case["input"] else None
    action = case["action"]
    if action == "train":
        args = ["train", src, "--out", str(tmp_path / "model"), *TINY_CLI]
        for key in case.get("conditions", SPEC["default_conditions"]):
            args += ["--condition", key]
        if "layer" in options:
            args += ["--layer", options["layer"]]
        if "gene_embeddings" in options:
            args += ["--gene-embeddings", os.path.join(INPUTS, options["gene_embeddings"]), "--n-blocks", str(options.get("n_blocks", 4))]
        for key, value in options.get("params", {}).items():
            args += ["--" + key.replace("_", "-"), str(value)]
    elif action == "generate":
        args = ["generate", model_dir, "--n", "3", "--out", str(tmp_path / "g.h5ad")]
        for k, v in options["set"].items():
            args += ["--set", f"{k}={v}"]
        if "guidance" in options:
            args += ["--guidance", str(options["guidance"])]
    elif action == "transfer":
        args = ["transfer", model_dir, src, "--out", str(tmp_path / "t.h5ad")]
        for k, v in options["set"].items():
            args += ["--set", f"{k}={v}"]
        for k in ("via", "shift_bandwidth", "shift_neighbours"):
            if k in options:
                args += ["--" + k.replace("_", "-"), str(options[k])]
    elif action == "evaluate":
        args = ["evaluate", src] + ([os.path.join(INPUTS, options["generated"])] if "generated" in options else [])
        args += ["--out", str(tmp_path / "eval"), "--no-umap", "--quiet"]
        for key in EVALUATE_OPTIONS:
            for value in (options[key] if isinstance(options.get(key), list) else [options[key]] if key in options else []):
                flag = {"groups": "--group", "embeddings": "--embedding"}.get(key, "--" + key.replace("_", "-"))
                args += [flag, str(value)]
    elif action in ("embed", "load", "write"):
        out = str(tmp_path / "out.h5ad")
        if action == "write" and case["output"] == "is_input":
            out = src
        args = ["embed", model_dir, src or os.path.join(INPUTS, "good.h5ad"), "--out", out, "--quiet"]
        if action == "write" and case["output"] == "disk_full":
            args.append("--overwrite")
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    if result.exit_code != 0:
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"unhandled {type(result.exception).__name__}: {result.exception}")
        assert "Traceback" not in result.output
        raise PySaveError(result.output.strip())
    if action == "embed":
        return ad.read_h5ad(str(tmp_path / "out.h5ad")).obsm["X_save"]
    return None


@pytest.mark.parametrize("surface", ["cli", "python"])
@pytest.mark.parametrize("case", SPEC["cases"], ids=[c["id"] for c in SPEC["cases"]])
def test_case(case, surface, good_model, tmp_path, monkeypatch):
    if surface not in case["surfaces"]:
        pytest.skip(f"{case['id']} does not apply to the {surface} surface")
    model_dir = _broken_model(good_model, case["model"], str(tmp_path)) if case.get("model") else good_model
    before = {f: open(os.path.join(INPUTS, f), "rb").read() for f in os.listdir(INPUTS)}
    out = tmp_path / "out.h5ad"
    if case["action"] == "write" and case["output"] in ("exists", "disk_full"):
        out.write_bytes(b"an earlier good file")
    earlier = tmp_path / "eval" / "metrics.tsv"
    if case["action"] == "evaluate" and case.get("output") == "exists":
        earlier.parent.mkdir()
        earlier.write_text("an earlier evaluation")
    if case.get("output") == "read_only":
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if mode & os.W_OK else real_access(path, mode))
    if case.get("output") == "disk_full":
        def full_disk(self, filename, *args, **kwargs):
            open(filename, "wb").write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(ad.AnnData, "write_h5ad", full_disk)
    run = _cli if surface == "cli" else _python
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(PySaveError) as err:
            run(case, model_dir, tmp_path)
        assert expect["error"] in str(err.value), str(err.value)
    else:
        result = run(case, model_dir, tmp_path)
        if "same_as" in expect:
            reference = pysave.SAVE.load(model_dir, device="cpu", verbose=False).get_latent_representation(
                ad.read_h5ad(os.path.join(INPUTS, expect["same_as"])), key_added=None)
            np.testing.assert_allclose(result, reference, rtol=1e-5, atol=1e-6)
    # Nothing the user had is lost: inputs unchanged, an earlier output intact, no temp files left.
    assert before == {f: open(os.path.join(INPUTS, f), "rb").read() for f in os.listdir(INPUTS)}
    if case["action"] == "write" and case["output"] in ("exists", "disk_full"):
        assert out.read_bytes() == b"an earlier good file"
    if case["action"] == "evaluate":  # a refused evaluation writes nothing, and keeps an earlier one
        assert (earlier.read_text() == "an earlier evaluation") if case.get("output") == "exists" else not earlier.parent.exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert not (tmp_path / "PWNED").exists()  # the pickle payload never ran
