"""Every CLI command through click's runner: outputs, and user errors without tracebacks."""
import inspect
import json
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pysave.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def user_error(result, fragment):
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and fragment in result.output, result.output
    assert "Traceback" not in result.output


def test_train_offers_every_model_parameter_with_the_engines_default():
    from pysave.model import DEFAULTS

    options = {p.name: p.default for p in main.commands["train"].params}
    assert set(DEFAULTS) <= set(options), sorted(set(DEFAULTS) - set(options))
    assert {k: options[k] for k in DEFAULTS} == DEFAULTS


def test_train_writes_a_model_and_refuses_to_overwrite(trained, tmp_path):
    out = tmp_path / "m"
    args = ["train", trained["data"], "--condition", "batch", "--condition", "cell_type", "--batch-key", "batch",
            "--out", out, "--epochs", 2, "--flow-epochs", 2, "--hidden-size", 32, "--condition-dim", 32,
            "--latent-dim", 32, "--encoder-layers", 1, "--decoder-layers", 1, "--heads", 2, "--flow-hidden-size", 32,
            "--flow-layers", 1, "--flow-token-size", 16, "--flow-heads", 2, "--n-blocks", 4, "--quiet"]
    assert run(*args).exit_code == 0
    assert (out / "config.json").exists() and (out / "weights.safetensors").exists()
    user_error(run(*args), "already exists")
    assert run(*args, "--overwrite").exit_code == 0
    assert json.loads((out / "config.json").read_text())["training"]["torch_compile"] is False
    assert run(*args, "--overwrite", "--torch-compile").exit_code == 0  # compiled VAE training, recorded
    assert json.loads((out / "config.json").read_text())["training"]["torch_compile"] is True
    info = run("info", out)
    assert info.exit_code == 0 and "300 genes in 4 blocks" in info.output and "batch:" in info.output


def test_train_and_generate_with_one_token_each_side(trained, tmp_path):
    """README's recipe for generating seen combinations of a small dataset (no attention): one
    gene block and one latent token of the whole latent, from the CLI, then generation."""
    out = tmp_path / "one_token"
    r = run("train", trained["data"], "--condition", "batch", "--condition", "cell_type", "--batch-key", "batch",
            "--out", out, "--epochs", 2, "--flow-epochs", 2, "--n-blocks", 1, "--latent-dim", 32,
            "--latent-token-size", 32, "--hidden-size", 64, "--condition-dim", 32, "--encoder-layers", 1,
            "--decoder-layers", 1, "--heads", 2, "--flow-hidden-size", 32, "--flow-layers", 1, "--flow-token-size", 16,
            "--flow-heads", 2, "--quiet")
    assert r.exit_code == 0, r.output
    import pysave

    model = pysave.SAVE.load(str(out), verbose=False)
    assert model.params["n_blocks"] == 1 and model.params["latent_token_size"] == model.params["latent_dim"] == 32
    assert "300 genes in 1 block of 300" in run("info", out).output
    gen = tmp_path / "gen.h5ad"
    assert run("generate", out, "--n", 5, "--set", "cell_type=B", "--set", "batch=10x_5prime", "--out", gen,
               "--quiet").exit_code == 0
    g = ad.read_h5ad(gen)
    assert g.shape == (5, 300) and np.isfinite(g.X).all() and g.obsm["X_save"].shape == (5, 32)


def test_generate_set_and_like(trained, tmp_path):
    out = tmp_path / "gen.h5ad"
    r = run("generate", trained["dir"], "--n", 12, "--set", "cell_type=B", "--set", "batch=10x_5prime",
            "--out", out, "--seed", 4, "--quiet")
    assert r.exit_code == 0, r.output
    g = ad.read_h5ad(out)
    assert g.shape == (12, 300) and (g.obs["cell_type"] == "B").all()
    assert g.uns["pysave"]["model_dir"] == os.path.abspath(trained["dir"])
    assert g.uns["pysave"]["calibrated"] and g.uns["pysave"]["calibrated_cells"] == 12  # a combination seen in training
    raw = tmp_path / "raw.h5ad"
    assert run("generate", trained["dir"], "--n", 12, "--set", "cell_type=B", "--set", "batch=10x_5prime",
               "--out", raw, "--seed", 4, "--no-calibrate", "--quiet").exit_code == 0
    r = ad.read_h5ad(raw)
    assert not r.uns["pysave"]["calibrated"] and not np.array_equal(r.X, g.X)
    np.testing.assert_array_equal(r.obsm["X_save"], g.obsm["X_save"])  # the same latents, decoded without the offset
    table = tmp_path / "plan.tsv"
    pd.DataFrame({"batch": ["10x_5prime", "10x_3prime_v1"], "cell_type": ["NK", "B"], "n_cells": [2, 3]}).to_csv(table, sep="\t", index=False)
    out2 = tmp_path / "like.h5ad"
    assert run("generate", trained["dir"], "--like", table, "--out", out2, "--quiet").exit_code == 0
    assert ad.read_h5ad(out2).obs["cell_type"].astype(str).tolist() == ["NK", "NK", "B", "B", "B"]


@pytest.mark.parametrize("args, fragment", [
    (["--n", 3, "--set", "cell_type=Martian"], "unknown value 'Martian'"),
    (["--n", 3, "--set", "tissue=lung"], "not a condition of this model"),
    (["--n", 3, "--set", "cell_type"], "--set needs KEY=VALUE"),
    ([], "give either --n N"),
])
def test_generate_errors(trained, tmp_path, args, fragment):
    user_error(run("generate", trained["dir"], *args, "--out", tmp_path / "x.h5ad"), fragment)
    assert not (tmp_path / "x.h5ad").exists()


def test_transfer_embed_correct_attention(trained, tmp_path):
    data = trained["data"]
    before = open(data, "rb").read()
    r = run("transfer", trained["dir"], data, "--set", "batch=10x_5prime", "--out", tmp_path / "t.h5ad", "--quiet")
    assert r.exit_code == 0, r.output
    t = ad.read_h5ad(tmp_path / "t.h5ad")
    assert (t.obs["batch"] == "10x_5prime").all() and "batch_source" in t.obs
    for command in ("transfer", "train"):  # --backed streams an .h5ad; an .rds is refused with the fix
        rds = tmp_path / "cells.rds"
        args = ([trained["dir"], rds, "--set", "batch=10x_5prime"] if command == "transfer" else [rds, "--condition", "batch"])
        r = run(command, *args, "--backed", "--out", tmp_path / f"{command}_rds.out", "--quiet")
        assert r.exit_code != 0 and "convert the .rds first" in r.output
    assert run("embed", trained["dir"], data, "--out", tmp_path / "e.h5ad", "--quiet").exit_code == 0
    assert ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_save"].shape == (400, 32)
    assert run("correct", trained["dir"], data, "--out", tmp_path / "c.h5ad", "--quiet").exit_code == 0
    c = ad.read_h5ad(tmp_path / "c.h5ad")
    assert c.layers["save_corrected"].shape == (400, 300) and "X_save" in c.obsm
    r = run("correct", trained["dir"], data, "--via", "flow", "--steps", 5, "--out", tmp_path / "cf.h5ad", "--quiet")
    assert r.exit_code == 0, r.output
    cf = ad.read_h5ad(tmp_path / "cf.h5ad")
    assert cf.obsm["X_save_corrected"].shape == (400, 32)
    assert not np.allclose(cf.layers["save_corrected"], c.layers["save_corrected"])
    # --reference twice: the mean over those batches, as correct(reference=[...])
    r = run("correct", trained["dir"], data, "--reference", "10x_5prime", "--reference", "10x_3prime_v2",
            "--out", tmp_path / "cm.h5ad", "--quiet")
    assert r.exit_code == 0, r.output
    expected = trained["model"].correct(ad.read_h5ad(data), reference=["10x_5prime", "10x_3prime_v2"], layer_added=None)
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "cm.h5ad").layers["save_corrected"], expected, rtol=0, atol=1e-6)
    r = run("correct", trained["dir"], data, "--no-normalize-total", "--out", tmp_path / "raw.h5ad", "--quiet")
    assert r.exit_code == 0, r.output
    expected = trained["model"].correct(ad.read_h5ad(data), layer_added=None, normalize_total=False)
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "raw.h5ad").layers["save_corrected"], expected, rtol=0, atol=1e-6)
    assert not np.allclose(expected, c.layers["save_corrected"])
    r = run("correct", trained["dir"], data, "--reference", "all", "--via", "flow", "--out", tmp_path / "bad.h5ad", "--quiet")
    assert r.exit_code != 0 and "goes via the decoder" in r.output and not (tmp_path / "bad.h5ad").exists()
    r = run("attention", trained["dir"], data, "--by", "cell_type", "--out", tmp_path / "a.tsv", "--plot", tmp_path / "a.png", "--quiet")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "a.tsv", sep="\t", index_col=0)
    assert table.shape == (len(set(trained["adata"].obs["cell_type"])), 8)
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert open(data, "rb").read() == before  # inputs are never modified


def test_info_blocks_and_json(trained, tmp_path):
    r = run("info", trained["dir"], "--blocks", tmp_path / "b.tsv")
    assert r.exit_code == 0
    active = trained["model"].training_summary["active_latent_dims"]
    assert f"latent dimensions in use: {active} of 32" in r.output and "collapse" not in r.output
    flow = trained["model"].training_summary["flow"]  # the flow keeps its last epoch, whichever was lowest
    assert f"flow {flow['epochs_run']} epochs, kept epoch {flow['epochs_run']} (lowest loss" in r.output
    cells = trained["model"].condition_latents["offset_cells"]
    assert f"generation calibrated for {(cells >= 3).sum()} of {len(cells)} combinations" in r.output
    groups = np.bincount(trained["model"].condition_latents["cell_groups"], minlength=len(cells))
    widened = int(((groups >= 10) & (cells >= 3)).sum())
    assert 0 < widened < len(cells) and f"spread calibrated for {widened} of them (those with >= 10 kept" in r.output
    assert f"spread pilots kept for {widened} combination(s) at guidance 1.5, 10 midpoint steps, precision 32" in r.output
    assert len(pd.read_csv(tmp_path / "b.tsv", sep="\t")) == 300
    r = run("info", trained["dir"], "--json")
    assert r.exit_code == 0 and '"format_version": 1' in r.output


def test_info_says_why_a_model_is_not_calibrated(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    old = tmp_path / "old_model"  # as a model directory saved before calibration existed
    shutil.copytree(trained["dir"], old)
    weights = load_file(str(old / "weights.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("extra.condition_latent_offset_")},
              str(old / "weights.safetensors"))
    r = run("info", old)
    assert r.exit_code == 0, r.output
    assert "generation not calibrated: this model directory was saved before calibration existed" in r.output
    assert "generation calibrated for" not in r.output


def test_input_errors(trained, tmp_path):
    user_error(run("embed", trained["dir"], tmp_path / "missing.h5ad", "--out", tmp_path / "o.h5ad"), "does not exist")
    bogus = tmp_path / "bogus.h5ad"
    bogus.write_text("hello")
    user_error(run("embed", trained["dir"], bogus, "--out", tmp_path / "o.h5ad"), "not an .h5ad")
    user_error(run("embed", tmp_path / "nomodel", trained["data"], "--out", tmp_path / "o.h5ad"), "model directory")
    user_error(run("embed", trained["dir"], trained["data"], "--out", trained["data"]), "also an input")
    user_error(run("train", trained["data"], "--condition", "tissue", "--out", tmp_path / "m"), "'tissue' is not a column")


def test_bad_values_in_data(trained, tmp_path):
    adata = ad.read_h5ad(trained["data"])
    lognorm = adata.copy()
    lognorm.X = lognorm.X.copy()
    lognorm.X.data = np.log1p(lognorm.X.data * 0.7)
    lognorm.write_h5ad(tmp_path / "lognorm.h5ad")
    user_error(run("train", tmp_path / "lognorm.h5ad", "--condition", "cell_type", "--out", tmp_path / "m"), "look log-normalized")
    neg = adata.copy()
    neg.X = neg.X.copy()
    neg.X.data[0] = -3
    neg.write_h5ad(tmp_path / "neg.h5ad")
    user_error(run("embed", trained["dir"], tmp_path / "neg.h5ad", "--out", tmp_path / "o.h5ad"), "negative values")
    empty = adata[:0].copy()
    empty.write_h5ad(tmp_path / "empty.h5ad")
    user_error(run("train", tmp_path / "empty.h5ad", "--condition", "cell_type", "--out", tmp_path / "m"), "zero cells")
    unknown = adata[:5].copy()
    unknown.obs["cell_type"] = "Martian"
    unknown.write_h5ad(tmp_path / "unknown.h5ad")
    user_error(run("transfer", trained["dir"], tmp_path / "unknown.h5ad", "--set", "batch=10x_5prime", "--out", tmp_path / "o.h5ad"), "unknown value")
    assert not (tmp_path / "m").exists() and not (tmp_path / "o.h5ad").exists()


def test_demo_writes_its_folder(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "1", "--flow-epochs", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("model/config.json", "generated.h5ad", "umap.png", "summary.txt"):
        assert (out / name).exists(), name
    generated = ad.read_h5ad(out / "generated.h5ad")
    combos = generated.obs.groupby(["batch", "cell_type"], observed=True).size()
    assert len(combos) == 27  # every batch x cell-type combination, unseen ones included
    assert "mean-expression correlation" in (out / "summary.txt").read_text()
    user_error(CliRunner().invoke(main, ["demo", "--out", str(out)]), "already exists")


def test_cli_solver_choices_and_defaults_are_pysave_s():
    # The CLI writes them out so that --help does not import torch.
    from pysave.flow import SOLVERS
    from pysave.model import DEFAULT_GUIDANCE, DEFAULT_SOLVER, DEFAULT_STEPS, NEVER_SEEN_GUIDANCE, SAVE

    params = {p.name: p for p in main.commands["generate"].params}
    assert tuple(params["solver"].type.choices) == SOLVERS
    assert (params["solver"].default, params["n_steps"].default) == (DEFAULT_SOLVER, DEFAULT_STEPS)
    # guidance: None, as generate_like's, and --help names the weights that None gives
    assert params["guidance"].default is None is inspect.signature(SAVE.generate_like).parameters["guidance"].default
    assert params["guidance"].show_default == (f"{DEFAULT_GUIDANCE:g} for combinations seen in training, "
                                               f"{NEVER_SEEN_GUIDANCE:g} for never-seen ones")
    from pysave.model import DEFAULT_CALIBRATE

    assert params["calibrate"].default == DEFAULT_CALIBRATE
    from pysave.model import CORRECT_VIAS, DEFAULT_CORRECT_VIA, DEFAULT_TRANSFER_VIA, TRANSFER_VIAS

    via = next(p for p in main.commands["correct"].params if p.name == "via")
    assert via.default == DEFAULT_CORRECT_VIA and set(via.type.choices) == set(CORRECT_VIAS)
    from pysave.model import DEFAULT_CORRECT_NORMALIZE_TOTAL

    assert next(p for p in main.commands["correct"].params if p.name == "normalize_total").default == DEFAULT_CORRECT_NORMALIZE_TOTAL
    via = next(p for p in main.commands["transfer"].params if p.name == "via")
    assert via.default == DEFAULT_TRANSFER_VIA and set(via.type.choices) == set(TRANSFER_VIAS)
    from pysave.model import OUTPUT_KINDS, TRANSFER_OUTPUTS

    kind = {c: next(p for p in main.commands[c].params if p.name == "output_kind") for c in ("generate", "transfer")}
    assert set(kind["transfer"].type.choices) == set(TRANSFER_OUTPUTS) and set(kind["generate"].type.choices) == set(OUTPUT_KINDS)
    from pysave.shift import SHIFT_BANDWIDTH, SHIFT_NEIGHBOURS

    for command in ("transfer", "generate"):
        assert next(p for p in main.commands[command].params if p.name == "shift_bandwidth").default == SHIFT_BANDWIDTH
        assert next(p for p in main.commands[command].params if p.name == "shift_neighbours").default == SHIFT_NEIGHBOURS
    from pysave.train import PRECISIONS

    for command in ("generate", "transfer", "train"):
        precision = next(p for p in main.commands[command].params if p.name == "precision")
        assert set(precision.type.choices) == set(PRECISIONS + ("auto",)) and precision.default == "auto"


def test_train_warns_of_posterior_collapse_in_one_plain_line(tmp_path):
    # A real process: under pytest, warnings are recorded by pytest instead of printed.
    import subprocess
    import sys

    tiny = os.path.join(os.path.dirname(__file__), "..", "..", "shared-tests", "fixtures", "pbmc_tiny.h5ad")
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "pysave", "train", tiny, "--condition", "batch", "--condition", "cell_type",
                        "--out", str(out), "--kl-weight", "5000", "--epochs", "30", "--flow-epochs", "2", "--hidden-size", "32",
                        "--condition-dim", "32", "--latent-dim", "32", "--n-blocks", "8", "--encoder-layers", "1",
                        "--decoder-layers", "1", "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "posterior collapse" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: posterior collapse: only 0 of the 32")
    assert "lower kl_weight" in lines[0] and "UserWarning" not in r.stderr
    info = run("info", out)
    assert "latent dimensions in use: 0 of 32 (posterior collapse)" in info.output
