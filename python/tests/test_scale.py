"""Scale (issue 6): backed (out-of-core) training, torchrun DDP on CPU, bf16, rank-0-only writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from pysave import SAVE
from pysave import distributed as dist_utils
from pysave import loader
from pysave.cli import main
from pysave.errors import PySaveError
from support import TINY, shared_file

PBMC = "pbmc_3tech_symphony_1200.h5ad"
QUICK = dict(max_epochs=3, flow_epochs=3, batch_size=128, lr=3e-3, flow_lr=3e-3, progress=False)
CONDITIONS = dict(condition_keys=["batch", "cell_type"], batch_key="batch")


def _model(adata, **params):
    SAVE.setup_anndata(adata, **CONDITIONS)
    return SAVE(adata, verbose=False, **{**TINY, **params})


def _max_weight_difference(a: SAVE, b: SAVE) -> float:
    sa, sb = a.vae.state_dict(), b.vae.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def test_backed_statistics_equal_in_memory():
    path = shared_file(PBMC)
    mem, backed = _model(ad.read_h5ad(path)), _model(ad.read_h5ad(path, backed="r"))
    assert backed._data.backed and not mem._data.backed
    np.testing.assert_array_equal(mem.scalers.values, backed.scalers.values)
    np.testing.assert_array_equal(mem.blocks.index, backed.blocks.index)
    x_mem, _ = mem._data.read(0, mem._data.n_cells)
    x_backed, _ = backed._data.read(0, backed._data.n_cells)
    assert abs(x_mem - x_backed).max() == 0


def test_backed_training_matches_in_memory():
    path = shared_file(PBMC)
    mem = _model(ad.read_h5ad(path)).train(**QUICK)
    # One chunk spanning every cell gives the in-memory batch order: equal up to float rounding.
    whole = _model(ad.read_h5ad(path, backed="r")).train(**QUICK, chunk_size=10**6)
    assert _max_weight_difference(mem, whole) < 1e-4
    # Chunk-shuffled batches differ in order only: the losses agree within noise.
    chunked = _model(ad.read_h5ad(path, backed="r")).train(**QUICK, chunk_size=100)
    assert _max_weight_difference(mem, chunked) > 1e-6  # a different order really was used
    for key in ("vae_validation_loss", "flow_validation_loss"):
        assert chunked.history[key][-1] == pytest.approx(mem.history[key][-1], rel=0.02)
    assert chunked.training_summary["backed"] and not mem.training_summary["backed"]
    backed_adata = ad.read_h5ad(path, backed="r")
    np.testing.assert_allclose(mem.get_latent_representation(ad.read_h5ad(path), key_added=None),
                               mem.get_latent_representation(backed_adata, key_added=None), atol=1e-5)


def test_chunk_shuffle_covers_each_training_cell_once():
    n = 1000
    x = sp.csr_matrix(np.arange(n, dtype=np.float32)[:, None])
    source = loader.InMemorySource(x, None, np.zeros((n, 1), dtype=np.int64), np.zeros(n, dtype=np.int64))
    member = np.ones(n, dtype=bool)
    member[::7] = False
    seen = [b[0][:, 0].numpy() for b in loader.shuffled_batches(source, member, 64, seed=3, epoch=1,
                                                                 device=torch.device("cpu"), chunk_size=50, buffer_chunks=3)]
    rows = np.concatenate(seen).astype(int)
    assert sorted(rows.tolist()) == np.flatnonzero(member).tolist()
    assert all(len(s) == 64 for s in seen[:-1])
    assert not np.array_equal(rows, np.sort(rows))  # shuffled
    # Two ranks: disjoint shards, equal numbers of steps.
    shards = [[b[0][:, 0].numpy() for b in loader.shuffled_batches(source, member, 32, 3, 1, torch.device("cpu"), 50, 3, r, 2)]
              for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    a, b = (set(np.concatenate(s).astype(int)) for s in shards)
    assert not a & b and len(a) == len(b)


def test_backed_csc_is_refused_with_a_fix(tmp_path):
    adata = ad.read_h5ad(shared_file(PBMC))
    adata.X = sp.csc_matrix(adata.X)
    path = tmp_path / "csc.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(PySaveError, match="CSR"):
        _model(ad.read_h5ad(path, backed="r"))


def test_backed_reads_a_counts_layer(tmp_path):
    adata = ad.read_h5ad(shared_file(PBMC))
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    path = tmp_path / "layer.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    SAVE.setup_anndata(backed, layer="counts", **CONDITIONS)
    model = SAVE(backed, verbose=False, **TINY)
    reference = _model(ad.read_h5ad(shared_file(PBMC)))
    np.testing.assert_array_equal(model.scalers.values, reference.scalers.values)


def test_bf16_training_runs_and_stays_close_to_fp32():
    adata = ad.read_h5ad(shared_file(PBMC))
    fp32 = _model(adata.copy()).train(**QUICK, precision="32")
    bf16 = _model(adata.copy()).train(**QUICK, precision="bf16")
    assert bf16.training_summary["precision"] == "bf16"
    for key in ("vae_validation_loss", "flow_validation_loss"):
        assert np.isfinite(bf16.history[key]).all()
        assert bf16.history[key][-1] == pytest.approx(fp32.history[key][-1], rel=0.05)
    with pytest.raises(PySaveError, match="precision"):
        _model(adata.copy()).train(**QUICK, precision="fp8")


def test_non_zero_rank_never_writes(monkeypatch, tmp_path):
    # A rank-1 process (of a world whose collectives are stubbed): no checkpoint, no model files.
    monkeypatch.setattr(dist_utils, "rank", lambda: 1)
    monkeypatch.setattr(dist_utils, "shard_range", lambda n: (0, n))
    model = _model(ad.read_h5ad(shared_file(PBMC)))
    model.train(**{**QUICK, "max_epochs": 4, "flow_epochs": 2}, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    assert not (tmp_path / "ckpt").exists()
    model.save(str(tmp_path / "rank1"))
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setattr(dist_utils, "rank", lambda: 0)
    model.save(str(tmp_path / "rank0"))
    assert (tmp_path / "rank0" / "config.json").exists()


def _torchrun(args, tmp_path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _ddp_train_args() -> list[str]:
    """`pysave train` of a tiny network on pbmc_3tech, for the torchrun tests."""
    net = ["--hidden-size", "32", "--condition-dim", "32", "--latent-dim", "32", "--encoder-layers", "1",
           "--decoder-layers", "1", "--heads", "2", "--flow-hidden-size", "32", "--flow-layers", "1",
           "--flow-token-size", "16", "--flow-heads", "2", "--flow-condition-dim", "32", "--n-blocks", "8"]
    return ["train", str(shared_file(PBMC)), "--condition", "batch", "--condition", "cell_type", "--batch-key", "batch",
            "--epochs", "4", "--flow-epochs", "4", "--batch-size", "128", "--lr", "3e-3", "--flow-lr", "3e-3"] + net


def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    train = _ddp_train_args()
    proc = _torchrun(["-m", "pysave"] + train + ["--out", str(tmp_path / "ddp")], tmp_path)
    assert "2 processes" in proc.stderr
    assert proc.stderr.count("wrote model to") == 1  # rank 0 only
    result = CliRunner().invoke(main, train + ["--out", str(tmp_path / "single"), "--quiet"])
    assert result.exit_code == 0, result.output
    ddp = json.loads((tmp_path / "ddp" / "config.json").read_text())
    single = json.loads((tmp_path / "single" / "config.json").read_text())
    assert ddp["training"]["processes"] == 2 and single["training"]["processes"] == 1
    # Same global batch, gradients averaged by DDP. The ranks draw other masks and noise than one
    # process does, so the curves agree statistically, not exactly; after 4 epochs the flow loss
    # is still falling steeply (one process, seed 0 vs seed 1: 1.82 vs 1.86).
    np.testing.assert_allclose(ddp["history"]["vae_validation_loss"], single["history"]["vae_validation_loss"], rtol=0.03)
    np.testing.assert_allclose(ddp["history"]["flow_validation_loss"], single["history"]["flow_validation_loss"], rtol=0.06)
    assert ddp["history"]["vae_validation_loss"][-1] < ddp["history"]["vae_validation_loss"][0]


def test_compiled_training_under_torchrun_matches_eager(tmp_path):
    # torch_compile=True with the compiled Transformers inside DDP: it trains like the eager DDP
    # run (measured: validation losses within 1.3e-7 relative, weights within 2.1e-4); rank 0 logs.
    train = _ddp_train_args()
    compiled = _torchrun(["-m", "pysave"] + train + ["--torch-compile", "--out", str(tmp_path / "compiled")], tmp_path)
    assert compiled.stderr.count("compiling the VAE") == 1
    _torchrun(["-m", "pysave"] + train + ["--out", str(tmp_path / "eager")], tmp_path)
    c = json.loads((tmp_path / "compiled" / "config.json").read_text())
    e = json.loads((tmp_path / "eager" / "config.json").read_text())
    assert c["training"]["processes"] == 2 and c["training"]["torch_compile"] is True
    assert e["training"]["torch_compile"] is False
    for key in ("vae_validation_loss", "flow_validation_loss"):
        np.testing.assert_allclose(c["history"][key], e["history"][key], rtol=1e-3)


def test_rank_one_skips_save_under_torchrun(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import anndata as ad
        from pysave import SAVE
        from pysave import distributed as dist_utils
        import torch
        dist_utils.init_from_env(torch.device("cpu"))
        a = ad.read_h5ad({str(shared_file(PBMC))!r})
        SAVE.setup_anndata(a, condition_keys=["cell_type"])
        m = SAVE(a, verbose=False, **{TINY!r})
        m.train(max_epochs=1, flow_epochs=1, batch_size=128, progress=False)
        m.save("model_rank%d" % dist_utils.rank())
        dist_utils.shutdown()
    """))
    _torchrun([str(script)], tmp_path)
    assert (tmp_path / "model_rank0" / "config.json").exists()
    assert not (tmp_path / "model_rank1").exists()


def test_no_rank_leaves_the_process_group_before_rank_zero_is_done(tmp_path):
    # Rank 0 writes the model after training while the others wait in shutdown(); a rank that
    # tore down its gloo connections meanwhile could abort at exit (seen once in CI).
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import pathlib, time
        import torch
        from pysave import distributed as dist_utils
        dist_utils.init_from_env(torch.device("cpu"))
        done = pathlib.Path({str(tmp_path / "rank0_done")!r})
        rank = dist_utils.rank()
        if rank == 0:
            time.sleep(2)
            done.write_text("written")
        dist_utils.shutdown()
        if rank == 1:
            assert done.exists(), "rank 1 left before rank 0 was done"
    """))
    _torchrun([str(script)], tmp_path)


def test_cli_backed_training(tmp_path):
    path = str(shared_file(PBMC))
    args = ["train", path, "--condition", "cell_type", "--backed", "--chunk-size", "256", "--epochs", "2",
            "--flow-epochs", "2", "--hidden-size", "32", "--condition-dim", "32", "--latent-dim", "32",
            "--encoder-layers", "1", "--decoder-layers", "1", "--heads", "2", "--flow-hidden-size", "32",
            "--flow-layers", "1", "--flow-token-size", "16", "--flow-heads", "2", "--flow-condition-dim", "32",
            "--n-blocks", "8", "--out", str(tmp_path / "m"), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["training"]["backed"] is True
    bad = CliRunner().invoke(main, args[:-3] + ["--chunk-size", "0", "--out", str(tmp_path / "m2")])
    assert bad.exit_code != 0 and "chunk-size" in bad.output


def test_compiled_training_matches_eager_and_is_undone_afterwards(monkeypatch):
    adata = ad.read_h5ad(shared_file(PBMC))
    eager = _model(adata.copy()).train(**QUICK)
    fast = _model(adata.copy()).train(**QUICK, torch_compile=True)
    again = _model(adata.copy()).train(**QUICK, torch_compile=True)
    assert fast.training_summary["torch_compile"] and not eager.training_summary["torch_compile"]
    assert _max_weight_difference(fast, again) == 0  # same seed, same compiled model
    # Fused kernels round differently: close to the eager run, not equal.
    assert 0 < _max_weight_difference(fast, eager) < 0.05
    for key in ("vae_validation_loss", "flow_validation_loss"):
        assert fast.history[key][-1] == pytest.approx(eager.history[key][-1], rel=0.02)
    # The compilation is undone: same weight names, and encoding runs the plain modules.
    assert list(fast.vae.state_dict()) == list(eager.vae.state_dict())
    for module in (fast.vae.encoder.transformer, fast.vae.decoder.transformer):
        assert module._compiled_call_impl is None
    np.testing.assert_allclose(fast.get_latent_representation(), eager.get_latent_representation(), atol=0.5)
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(PySaveError, match="C\\+\\+ compiler.*no-such-compiler"):
        _model(adata.copy()).train(**QUICK, torch_compile=True)


def test_compiled_generation_matches_eager_is_recorded_and_undone(monkeypatch, tmp_path):
    adata = ad.read_h5ad(shared_file(PBMC))
    model = _model(adata.copy()).train(**QUICK)
    cell_type = str(adata.obs["cell_type"].iloc[0])
    # Two chunks of other sizes (dynamic shapes), and a midpoint solve with guidance: the defaults' path.
    kw = dict(n_cells=300, seed=5, batch_size=200, output="mean")
    eager = model.generate({"cell_type": cell_type}, **kw)
    fast = model.generate({"cell_type": cell_type}, **kw, torch_compile=True)
    again = model.generate({"cell_type": cell_type}, **kw, torch_compile=True)
    assert fast.uns["pysave"]["torch_compile"] is True and eager.uns["pysave"]["torch_compile"] is False
    np.testing.assert_array_equal(fast.X, again.X)  # same seed, same cells
    # Fused kernels round differently: the same cells up to rounding (so the compiled code did run).
    assert not np.array_equal(fast.obsm["X_save"], eager.obsm["X_save"])
    np.testing.assert_allclose(fast.obsm["X_save"], eager.obsm["X_save"], atol=1e-3)
    np.testing.assert_allclose(fast.X, eager.X, atol=1e-3)
    assert model.flow.transformer._compiled_call_impl is None  # undone: later calls run the plain module
    out = tmp_path / "compiled.h5ad"
    result = CliRunner().invoke(main, ["generate", _saved(model, tmp_path), "--n", "20", "--set", f"cell_type={cell_type}",
                                       "--torch-compile", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).uns["pysave"]["torch_compile"] is True
    with pytest.raises(PySaveError, match="torch_compile must be True or False"):
        model.generate({"cell_type": cell_type}, n_cells=2, torch_compile="yes")
    monkeypatch.setenv("CXX", "no-such-compiler++")
    refused = tmp_path / "refused.h5ad"
    with pytest.raises(PySaveError, match="C\\+\\+ compiler.*or generate without torch_compile"):
        model.generate_to_h5ad(str(refused), model.conditions_table({"cell_type": cell_type}, 5), torch_compile=True)
    assert not refused.exists()  # refused before any file was begun


def test_compiled_generation_still_compiles_past_dynamos_recompile_limit(monkeypatch):
    """Each network shape adds a compiled version to the code of pysave's Transformer.forward;
    past torch._dynamo's recompile_limit dynamo runs it uncompiled without an error. compiled()
    raises the limit while it runs: with the limit at 1, a second network still compiles."""
    import torch._dynamo

    adata = ad.read_h5ad(shared_file(PBMC))
    cell_type = str(adata.obs["cell_type"].iloc[0])
    kw = dict(n_cells=40, seed=5, output="mean")
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    first = _model(adata.copy()).train(**QUICK)
    first.generate({"cell_type": cell_type}, **kw, torch_compile=True)  # takes the one version allowed
    second = _model(adata.copy(), flow_layers=2).train(**QUICK)  # another shape: a second version
    eager = second.generate({"cell_type": cell_type}, **kw)
    fast = second.generate({"cell_type": cell_type}, **kw, torch_compile=True)
    assert not np.array_equal(fast.obsm["X_save"], eager.obsm["X_save"])  # the compiled code ran
    np.testing.assert_allclose(fast.obsm["X_save"], eager.obsm["X_save"], atol=1e-3)
    assert torch._dynamo.config.recompile_limit == 1  # put back


def _saved(model: SAVE, tmp_path) -> str:
    path = str(tmp_path / "model")
    model.save(path)
    return path


def test_compiled_training_finds_python_headers_under_an_embedded_python(monkeypatch, tmp_path):
    """R's reticulate reports the venv as Python's base, where Python.h is not: pysave points the
    compiler at the interpreter's own headers, or says what to install when there are none."""
    import sysconfig

    from pysave import train

    cpu = torch.device("cpu")
    assert train.cpu_toolchain(cpu) is None  # a plain interpreter: inductor finds the headers itself
    real_include = sysconfig.get_config_var("INCLUDEPY")
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **k: str(tmp_path) if name == "include" else None)
    assert train.cpu_toolchain(cpu) == real_include
    assert train.cpu_toolchain(torch.device("meta")) is None  # off the CPU inductor needs no C++ headers
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: str(tmp_path / "none"))
    with pytest.raises(PySaveError, match="Python.h.*python3-dev"):
        train.cpu_toolchain(cpu)
