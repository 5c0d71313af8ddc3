import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import pysave
from pysave import data as D
from pysave.errors import ModelDirectoryError, PySaveError
from support import TINY


def test_repr_and_blocks(trained):
    model = trained["model"]
    assert "300 genes in 8 blocks" in repr(model)
    table = model.gene_blocks()
    assert len(table) == 300 and table["gene"].is_unique and set(table["block"]) == set(range(8))


def test_training_history_and_summary(trained):
    model = trained["model"]
    h = model.history
    assert len(h["vae_train_loss"]) == model.training_summary["vae"]["epochs_run"]
    assert h["vae_train_loss"][-1] < h["vae_train_loss"][0]
    assert h["flow_train_loss"][-1] < h["flow_train_loss"][0]
    assert "vae_validation_loss" in h and model.training_summary["n_validation"] == 40


def test_generate_any_subset_and_provenance(trained):
    model = trained["model"]
    out = model.generate({"cell_type": "B"}, n_cells=30, seed=1)
    assert out.shape == (30, 300)
    assert out.obs["cell_type"].astype(str).eq("B").all()
    assert out.obs["batch"].isna().all()  # not given -> masked
    assert np.isfinite(out.X).all() and out.X.min() >= 0
    assert out.uns["pysave"]["kind"] == "generated" and out.uns["pysave"]["X"].startswith("log1p")
    again = model.generate({"cell_type": "B"}, n_cells=30, seed=1)
    assert np.array_equal(out.X, again.X)  # deterministic given the seed
    other = model.generate({"cell_type": "B"}, n_cells=30, seed=2)
    assert not np.array_equal(out.X, other.X)


def test_generated_expression_is_on_the_real_scale(trained):
    model, adata = trained["model"], trained["adata"]
    import scanpy as sc

    real = adata.copy()
    sc.pp.normalize_total(real, target_sum=1e4)
    sc.pp.log1p(real)
    fake = model.generate_like(adata.obs[["batch", "cell_type"]], seed=0)
    real_mean = np.asarray(real.X.mean(0)).ravel()
    fake_mean = fake.X.mean(0)
    assert np.corrcoef(real_mean, fake_mean)[0, 1] > 0.8
    assert 0.5 < fake_mean.sum() / real_mean.sum() < 2.0


def test_generate_like_with_counts_column_and_masking(trained):
    model = trained["model"]
    table = pd.DataFrame({"batch": ["10x_5prime", None], "cell_type": ["NK", "B"], "n_cells": [3, 2], "note": ["x", "y"]})
    out = model.generate_like(table, guidance=2.0, n_steps=5)
    assert out.n_obs == 5
    assert out.obs["batch"].isna().sum() == 2
    assert out.obs["note"].tolist() == ["x", "x", "x", "y", "y"]


def test_generate_like_an_anndata_uses_its_obs(trained):
    model, adata = trained["model"], trained["adata"]
    held = adata[:7]
    like = model.generate_like(held, seed=3)  # "cells like these": one per cell, their conditions
    same = model.generate_like(held.obs, seed=3)
    np.testing.assert_array_equal(like.X, same.X)
    assert like.obs["cell_type"].astype(str).tolist() == held.obs["cell_type"].astype(str).tolist()
    with pytest.raises(PySaveError, match="not a ndarray"):
        model.generate_like(np.zeros((3, 2)))


def test_generate_errors(trained):
    model = trained["model"]
    with pytest.raises(PySaveError, match="unknown value 'Martian'.*knows"):
        model.generate({"cell_type": "Martian"}, n_cells=2)
    with pytest.raises(PySaveError, match="not a condition of this model"):
        model.generate({"tissue": "lung"}, n_cells=2)
    with pytest.raises(PySaveError, match="n_cells must be at least 1"):
        model.generate({"cell_type": "B"}, n_cells=0)
    with pytest.raises(PySaveError, match="solver must be one of"):
        model.generate({"cell_type": "B"}, n_cells=2, solver="heun")


@pytest.mark.parametrize("solver", ["dopri5", "midpoint", "rk4"])
def test_other_solvers_run_and_are_recorded(trained, solver):
    out = trained["model"].generate({"cell_type": "NK"}, n_cells=4, solver=solver, n_steps=5)
    assert out.uns["pysave"]["solver"] == solver and np.isfinite(out.X).all()


def test_transfer_changes_only_the_target(trained):
    model, adata = trained["model"], trained["adata"]
    cells = adata[adata.obs["batch"] == "10x_3prime_v2"][:25].copy()
    out = model.transfer(cells, {"batch": "10x_5prime"})
    assert out.shape == (25, 300)
    assert (out.obs["batch"] == "10x_5prime").all()
    assert (out.obs["batch_source"] == "10x_3prime_v2").all()
    assert out.obs["cell_type"].equals(cells.obs["cell_type"])
    same = model.transfer(cells, {"batch": "10x_3prime_v2"})
    assert not np.allclose(out.X, same.X)
    assert "X_save" in out.obsm


def test_latent_correct_attention(trained):
    model, adata = trained["model"], trained["adata"].copy()
    z = model.get_latent_representation(adata)
    assert z.shape == (400, 32) and np.array_equal(adata.obsm["X_save"], z)
    corrected = model.correct(adata)
    assert adata.layers["save_corrected"].shape == (400, 300) and np.isfinite(corrected).all()
    ref = model.correct(adata, reference="10x_5prime", layer_added="to_5prime")
    assert not np.allclose(ref, corrected)
    attn = model.attention_by(adata, "cell_type")
    assert list(attn.columns) == [f"block_{b}" for b in range(8)]
    assert set(attn.index) == set(adata.obs["cell_type"].astype(str))
    np.testing.assert_allclose(attn.sum(1), 1.0, rtol=1e-4)  # attention over blocks sums to 1


def test_correct_via_flow_moves_the_latent(trained):
    # How well it mixes batches is measured on real data (benchmarks/README.md, scIB), not here:
    # the tiny fixture's flow is barely trained.
    model, adata = trained["model"], trained["adata"].copy()
    z = model.get_latent_representation(adata)
    x_dec = model.correct(adata, via="decoder", layer_added="dec")
    assert "X_save_corrected" not in adata.obsm  # the decoder path keeps the latent
    x_flow = model.correct(adata, via="flow", layer_added="flow", n_steps=10)
    moved = adata.obsm["X_save_corrected"]
    assert moved.shape == z.shape and not np.allclose(moved, z) and not np.allclose(x_flow, x_dec)
    np.testing.assert_array_equal(adata.layers["flow"], x_flow)
    # = the transfer with the batch masked through the flow, without guidance; deterministic
    t = model.transfer(adata, {"batch": None}, via="flow", guidance=1.0, n_steps=10)
    np.testing.assert_allclose(t.obsm["X_save"], moved, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.correct(adata.copy(), via="flow", n_steps=10), x_flow)
    to_ref = model.correct(adata, via="flow", reference="10x_5prime", layer_added=None, n_steps=10)
    assert not np.allclose(to_ref, x_flow)
    with pytest.raises(PySaveError, match=r"goes via one of \[.decoder., .flow.\], got .harmony."):
        model.correct(adata, via="harmony")


def test_correct_is_back_on_the_input_scale(trained):
    model, adata = trained["model"], trained["adata"].copy()
    mean = model.correct(adata, layer_added=None, normalize_total=False)
    # the decoder's mean: E[log1p] per gene, the transfer's mean output with the batch masked
    np.testing.assert_allclose(mean, model.transfer(adata, {"batch": None}, guidance=1.0, via="decoder").X, rtol=0, atol=1e-6)
    totals = np.expm1(mean.astype(np.float64)).sum(1)
    assert totals.std() / totals.mean() > 0.01  # cells' profiles sum to anything
    for reference in (None, "all"):
        raw = model.correct(adata, layer_added=None, reference=reference, normalize_total=False)
        corrected = model.correct(adata, layer_added="c", reference=reference)
        np.testing.assert_allclose(np.expm1(corrected.astype(np.float64)).sum(1), 1e4, rtol=1e-4)
        np.testing.assert_allclose(corrected, D.normalize_log_profiles(raw), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(adata.layers["c"], corrected)


def test_correct_averages_over_reference_batches(trained):
    model, adata = trained["model"], trained["adata"].copy()
    batches = model.registry["categories"]["batch"]
    # the decoder's means are averaged (normalize_total=False shows them; by default the mean is then rescaled)
    each = [model.correct(adata, reference=b, layer_added=None, normalize_total=False) for b in batches]
    # "all" = every batch of the model = the mean of the single-batch corrections; any chunk size
    mean_all = model.correct(adata, reference="all", layer_added="mean_all", batch_size=37, normalize_total=False)
    np.testing.assert_allclose(mean_all, np.mean(each, axis=0), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(adata.layers["mean_all"], mean_all)
    np.testing.assert_allclose(model.correct(adata, reference=list(batches), layer_added=None, normalize_total=False),
                               mean_all, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.correct(adata, reference="all", layer_added=None),
                               D.normalize_log_profiles(mean_all.copy()), rtol=0, atol=1e-5)
    two = model.correct(adata, reference=batches[:2], layer_added=None, normalize_total=False)
    np.testing.assert_allclose(two, (each[0] + each[1]) / 2, rtol=0, atol=1e-5)
    # a list of one is that batch
    np.testing.assert_array_equal(model.correct(adata, reference=[batches[2]], layer_added=None, normalize_total=False), each[2])
    for bad, match in [([], "empty list"), (["nowhere"], "unknown value 'nowhere'.*10x_5prime"),
                       ([batches[0], batches[0]], "more than once"), (["[MASK]", batches[0]], "cannot be averaged")]:
        with pytest.raises(PySaveError, match=match):
            model.correct(adata, reference=bad, layer_added="never")
    with pytest.raises(PySaveError, match="goes via the decoder"):
        model.correct(adata, reference="all", via="flow", layer_added="never")
    assert "never" not in adata.layers  # a refused call writes nothing


def test_correct_reference_all_when_a_batch_is_called_all(trained):
    model = trained["model"]
    saved = model.registry["categories"]["batch"]
    model.registry["categories"]["batch"] = [*saved[:2], "all"]
    try:
        with pytest.raises(PySaveError, match=r"'all' is both a batch.*reference=\['all'\]"):
            model._correction_references("batch", "all")
        assert model._correction_references("batch", ["all"]) == ["all"]
    finally:
        model.registry["categories"]["batch"] = saved


def test_genes_are_matched_by_name(trained):
    model, adata = trained["model"], trained["adata"]
    shuffled = adata[:, np.random.default_rng(0).permutation(adata.n_vars)].copy()
    np.testing.assert_allclose(model.get_latent_representation(shuffled, key_added=None),
                               model.get_latent_representation(adata, key_added=None), rtol=1e-5, atol=1e-5)
    with pytest.raises(PySaveError, match="5 of the model's 300 genes are missing"):
        model.get_latent_representation(adata[:, 5:].copy())


def test_save_load_roundtrip_is_identical(trained, tmp_path):
    model = trained["model"]
    loaded = pysave.SAVE.load(trained["dir"], device="cpu")
    assert loaded.is_trained and loaded.genes == model.genes and loaded.registry == model.registry
    a = model.generate({"cell_type": "B", "batch": "10x_5prime"}, n_cells=20, seed=3)
    b = loaded.generate({"cell_type": "B", "batch": "10x_5prime"}, n_cells=20, seed=3)
    assert np.array_equal(a.X, b.X)
    cells = trained["adata"][:30].copy()
    assert np.array_equal(model.transfer(cells, {"batch": "10x_5prime"}).X,
                          loaded.transfer(cells, {"batch": "10x_5prime"}).X)
    config = json.load(open(os.path.join(trained["dir"], "config.json")))
    assert config["format_version"] == 1 and config["versions"]["torch"] == torch.__version__
    assert config["blocks"]["n_blocks"] == 8 and len(config["genes"]) == 300
    with pytest.raises(PySaveError, match="already exists"):
        model.save(trained["dir"])


def test_model_config_is_strict_json_and_keeps_non_finite_values(tmp_path):
    # A non-finite value in a model's config (e.g. a loss that was never computed) is written as
    # {"__float__": "nan"}: Python's bare NaN is not JSON, and saveR's LoadSAVE (jsonlite) rejects it.
    from pysave.io import load_model_dir, save_model_dir

    config = {"format_version": 1, "params": {"bandwidth": float("inf")}, "history": {"loss": [1.5, float("nan")]}}
    path = save_model_dir(str(tmp_path / "m"), config, {"w": torch.zeros(2)})
    text = open(os.path.join(path, "config.json")).read()
    json.loads(text, parse_constant=lambda word: pytest.fail(f"config.json holds {word}"))
    loaded, tensors = load_model_dir(path)
    assert loaded["params"]["bandwidth"] == float("inf") and loaded["history"]["loss"][0] == 1.5
    assert np.isnan(loaded["history"]["loss"][1]) and list(tensors) == ["w"]


def test_decoder_head_size_survives_save_and_load(pbmc_small, tmp_path):
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    model = pysave.SAVE(pbmc_small, verbose=False, decoder_head_size=0, **TINY)  # the paper's eq. (6)
    model.train(max_epochs=1, flow_epochs=1, progress=False)
    loaded = pysave.SAVE.load(model.save(str(tmp_path / "m")), device="cpu", verbose=False)
    assert loaded.params["decoder_head_size"] == 0
    assert isinstance(loaded.vae.decoder.to_genes, torch.nn.Linear)
    assert np.array_equal(model.generate(n_cells=5, seed=1).X, loaded.generate(n_cells=5, seed=1).X)


def test_feed_forward_size_sizes_the_vae_blocks_and_survives_save_and_load(pbmc_small, tmp_path):
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    default = pysave.SAVE(pbmc_small, verbose=False, **TINY)
    width = TINY["hidden_size"]
    assert default.params["feed_forward_size"] is None
    assert default.vae.encoder.transformer.blocks[0].mlp[0].out_features == 4 * width
    model = pysave.SAVE(pbmc_small, verbose=False, feed_forward_size=2 * width, **TINY)
    for part in (model.vae.encoder, model.vae.decoder):
        assert all(b.mlp[0].out_features == 2 * width and b.mlp[3].in_features == 2 * width for b in part.transformer.blocks)
    flow_width = model.params["flow_hidden_size"]
    assert model.flow.transformer.blocks[0].mlp[0].out_features == 4 * flow_width  # the flow keeps its own
    model.train(max_epochs=1, flow_epochs=1, progress=False)
    path = model.save(str(tmp_path / "m"))
    loaded = pysave.SAVE.load(path, device="cpu", verbose=False)
    assert loaded.params["feed_forward_size"] == 2 * width
    assert np.array_equal(model.generate(n_cells=5, seed=1).X, loaded.generate(n_cells=5, seed=1).X)
    # A model directory written before the parameter existed (no key) loads with 4 x hidden_size.
    older = str(tmp_path / "older")
    default.train(max_epochs=1, flow_epochs=1, progress=False)
    default.save(older)
    config_path = os.path.join(older, "config.json")
    config = json.load(open(config_path))
    del config["params"]["feed_forward_size"]
    json.dump(config, open(config_path, "w"))
    assert pysave.SAVE.load(older, device="cpu", verbose=False).vae.decoder.transformer.blocks[0].mlp[0].out_features == 4 * width


def test_mask_all_prob_is_saved_and_older_models_load_with_what_they_were_trained_with(pbmc_small, tmp_path):
    import warnings

    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    # Only masking all conditions at once trains the unconditional field here: guidance is fine.
    model = pysave.SAVE(pbmc_small, verbose=False, mask_prob=0.0, mask_all_prob=0.2, **TINY)
    model.train(max_epochs=1, flow_epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate({"cell_type": "B"}, n_cells=3, guidance=2.0)
    path = model.save(str(tmp_path / "m"))
    assert pysave.SAVE.load(path, device="cpu", verbose=False).params["mask_all_prob"] == 0.2
    # A directory saved before the parameter existed lacks the key: it was trained without it.
    config = json.load(open(os.path.join(path, "config.json")))
    del config["params"]["mask_all_prob"]
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    assert pysave.SAVE.load(path, device="cpu", verbose=False).params["mask_all_prob"] == 0.0


def _gelu_forms(model) -> set:
    return {m.approximate for net in (model.vae, model.flow) for m in net.modules() if isinstance(m, torch.nn.GELU)}


def test_gelu_is_exact_by_default_and_older_models_keep_their_tanh_form(pbmc_small, tmp_path):
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    model = pysave.SAVE(pbmc_small, verbose=False, **TINY)
    assert model.params["gelu_approximate"] == "none" and _gelu_forms(model) == {"none"}
    model.train(max_epochs=1, flow_epochs=1, progress=False)
    path = model.save(str(tmp_path / "m"))
    loaded = pysave.SAVE.load(path, device="cpu", verbose=False)
    assert _gelu_forms(loaded) == {"none"}
    assert np.array_equal(model.generate(n_cells=5, seed=1).X, loaded.generate(n_cells=5, seed=1).X)
    # A directory saved before the parameter existed was trained with the tanh form and loads with it:
    # the same weights then decode otherwise than with exact GELU.
    config = json.load(open(os.path.join(path, "config.json")))
    del config["params"]["gelu_approximate"]
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    older = pysave.SAVE.load(path, device="cpu", verbose=False)
    assert older.params["gelu_approximate"] == "tanh" and _gelu_forms(older) == {"tanh"}
    assert not np.array_equal(loaded.generate(n_cells=5, seed=1, output="mean").X, older.generate(n_cells=5, seed=1, output="mean").X)
    tanh = pysave.SAVE(pbmc_small, verbose=False, gelu_approximate="tanh", **TINY)
    assert _gelu_forms(tanh) == {"tanh"}
    with pytest.raises(PySaveError, match="gelu_approximate must be one of"):
        pysave.SAVE(pbmc_small, gelu_approximate="exact")


def test_load_with_adata_sets_default_data(trained):
    loaded = pysave.SAVE.load(trained["dir"], adata=trained["adata"], device="cpu", verbose=False)
    assert loaded.get_latent_representation().shape == (400, 32)


def test_broken_model_directories(trained, tmp_path):
    import shutil

    with pytest.raises(ModelDirectoryError, match="does not exist"):
        pysave.SAVE.load(str(tmp_path / "none"))
    broken = tmp_path / "broken"
    shutil.copytree(trained["dir"], broken)
    (broken / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelDirectoryError, match="corrupted"):
        pysave.SAVE.load(str(broken))
    os.remove(broken / "weights.safetensors")
    with pytest.raises(ModelDirectoryError, match="incomplete: weights.safetensors is missing"):
        pysave.SAVE.load(str(broken))
    newer = tmp_path / "newer"
    shutil.copytree(trained["dir"], newer)
    config = json.load(open(newer / "config.json"))
    config["format_version"] = 99
    json.dump(config, open(newer / "config.json", "w"))
    with pytest.raises(ModelDirectoryError, match="newer than this pysave reads"):
        pysave.SAVE.load(str(newer))
    (newer / "config.json").write_text("{not json")
    with pytest.raises(ModelDirectoryError, match="corrupted"):
        pysave.SAVE.load(str(newer))


def test_weights_file_is_not_pickle(trained):
    head = open(os.path.join(trained["dir"], "weights.safetensors"), "rb").read(8)
    header_len = int.from_bytes(head, "little")
    assert 0 < header_len < 10_000_000  # safetensors: 8-byte header length, then JSON; no pickle opcodes


def test_training_is_bit_identical_for_a_seed(pbmc_small):
    """Same seed, machine and data: identical latent, generated and transferred cells."""
    pysave.SAVE.setup_anndata(pbmc_small, ["batch", "cell_type"], batch_key="batch")
    runs = []
    for seed in (3, 3, 4):
        m = pysave.SAVE(pbmc_small, verbose=False, seed=seed, **TINY)
        m.train(max_epochs=3, flow_epochs=3, batch_size=128, progress=False)
        runs.append((m.get_latent_representation(pbmc_small, key_added=None),
                     m.generate({"cell_type": "B"}, n_cells=5, seed=seed).X,
                     m.transfer(pbmc_small[:20], {"batch": "10x_5prime"}).X))
    for a, b in zip(runs[0], runs[1]):
        assert np.array_equal(a, b)
    for a, c in zip(runs[0], runs[2]):
        assert not np.array_equal(a, c)  # another seed gives another model


@pytest.mark.parametrize("likelihood", ["gaussian", "nb"])
def test_other_likelihoods_train_and_generate(pbmc_small, likelihood):
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    m = pysave.SAVE(pbmc_small, verbose=False, likelihood=likelihood, **TINY)
    m.train(max_epochs=2, flow_epochs=2, batch_size=128, progress=False)
    out = m.generate({"cell_type": "B"}, n_cells=5)
    assert np.isfinite(out.X).all() and out.X.min() >= 0 and out.X.max() < 20


def test_counts_in_a_layer_and_dense_X(pbmc_small):
    pbmc_small.layers["counts"] = pbmc_small.X.copy()
    pbmc_small.X = np.log1p(pbmc_small.X.toarray())
    with pytest.raises(PySaveError, match="non-integer"):
        pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
        pysave.SAVE(pbmc_small, verbose=False, **TINY)
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"], layer="counts")
    m = pysave.SAVE(pbmc_small, verbose=False, **TINY)
    m.train(max_epochs=1, flow_epochs=1, progress=False)
    dense = pbmc_small.copy()
    dense.layers["counts"] = dense.layers["counts"].toarray()
    np.testing.assert_allclose(m.get_latent_representation(dense, key_added=None),
                               m.get_latent_representation(pbmc_small, key_added=None), rtol=1e-5, atol=1e-5)


def test_tiny_datasets_and_bad_parameters(pbmc_small):
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    with pytest.raises(PySaveError, match="unknown parameter"):
        pysave.SAVE(pbmc_small, hidden=3)
    for key in ("mask_prob", "mask_all_prob", "vae_mask_prob"):
        with pytest.raises(PySaveError, match=rf"{key} must be in \[0, 1\)"):
            pysave.SAVE(pbmc_small, **{key: 1.0})
    with pytest.raises(PySaveError, match="likelihood must be one of"):
        pysave.SAVE(pbmc_small, likelihood="poisson")
    with pytest.raises(PySaveError, match=r"decoder_head_size must be a whole number >= 0 \(0 = the paper"):
        pysave.SAVE(pbmc_small, decoder_head_size=-1)
    for key, value in [("decoder_head_size", 40.5), ("feed_forward_size", 0), ("hidden_size", 0), ("n_heads", True), ("n_blocks", "4")]:
        with pytest.raises(PySaveError, match=f"{key} must be a whole number"):
            pysave.SAVE(pbmc_small, **{key: value})
    # Whole floats (R numbers, JSON) are taken as ints, so torch never sees a float width.
    sized = pysave.SAVE(pbmc_small, verbose=False, **{**TINY, "hidden_size": 16.0, "decoder_head_size": np.float64(8)})
    assert type(sized.params["hidden_size"]) is int and sized.params["decoder_head_size"] == 8
    assert sized.vae.decoder.to_genes[0].out_features == 8
    one = pbmc_small[:1].copy()
    pysave.SAVE.setup_anndata(one, ["cell_type"])
    m = pysave.SAVE(one, verbose=False, **TINY)
    m.train(max_epochs=1, flow_epochs=1, progress=False)  # a single cell trains (no validation split)
    assert m.training_summary["n_validation"] == 0
    assert np.isfinite(m.generate(n_cells=3).X).all()
    with pytest.raises(PySaveError, match="not trained yet"):
        pysave.SAVE(one, verbose=False, **TINY).generate(n_cells=1)
    with pytest.raises(PySaveError, match="not set up for SAVE"):
        pysave.SAVE(pbmc_small[:, :10].copy().__class__(pbmc_small.X[:, :10]))


def test_streamed_generation_equals_in_memory(trained, tmp_path):
    import anndata as ad

    model = trained["model"]
    table = pd.DataFrame({"cell_type": ["B", "NK", "T_CD4"], "batch": ["10x_5prime", None, "10x_3prime_v1"], "n_cells": [7, 5, 9]})
    memory = model.generate_like(table, seed=5, batch_size=6)
    path = model.generate_to_h5ad(str(tmp_path / "s.h5ad"), table, seed=5, batch_size=6)
    disk = ad.read_h5ad(path)
    assert np.array_equal(disk.X, memory.X) and np.array_equal(disk.obsm["X_save"], memory.obsm["X_save"])
    assert disk.obs["cell_type"].astype(str).tolist() == memory.obs["cell_type"].astype(str).tolist()
    assert disk.obs["batch"].isna().sum() == 5 and disk.var_names.tolist() == model.genes
    assert disk.uns["pysave"]["kind"] == "generated"
    with pytest.raises(PySaveError, match="already exists"):
        model.generate_to_h5ad(path, table)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_training_repeats_with_several_threads(pbmc_small):
    """With 2 threads the backward of the per-condition gathers added in parallel, so two fp32 runs
    of one seed gave other weights; training now runs torch's deterministic kernels on the CPU
    (and restores the user's setting afterwards)."""
    import hashlib

    import torch

    pysave.SAVE.setup_anndata(pbmc_small, ["batch", "cell_type"], batch_key="batch")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        digests = []
        for _ in range(2):
            m = pysave.SAVE(pbmc_small, verbose=False, seed=0, hidden_size=64, condition_dim=256, n_blocks=8,
                            n_encoder_layers=1, n_decoder_layers=1, latent_dim=32)
            m.train(max_epochs=2, flow_epochs=1, batch_size=128, progress=False, device="cpu", precision="32")
            digests.append(hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in m.vae.state_dict().values())).hexdigest())
    finally:
        torch.set_num_threads(threads)
    assert digests[0] == digests[1]
    assert not torch.are_deterministic_algorithms_enabled()
