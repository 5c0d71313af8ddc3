"""The training loop's early stopping, and the patience and lr warm-up each stage of SAVE.train gets."""
import sys

import numpy as np
import pytest
import torch

import pysave
import pysave.model as model_module
from pysave.train import fit
from support import TINY


class _Drifting(torch.nn.Module):
    """One weight pushed up by a constant training gradient; validation is best at w = 1, so
    the validation loss falls, reaches its minimum and rises, like an overfitting model."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def _loss(module):
    def loss(batch, generator):
        if batch.shape[0] == 2:  # the validation batch
            return {"loss": (module.w - 1.0) ** 2}
        return {"loss": -module.w}
    return loss


def _fit(patience, epochs=40, keep="best"):
    torch.manual_seed(0)
    module = _Drifting()
    # plain steps of lr: weight decay 0 and no warm-up, so w grows by lr per epoch
    result = fit(module, _loss(module), lambda epoch: [torch.zeros(1)], lambda: [torch.zeros(2)], epochs, 1, 0.1, 0.0, 1, patience,
                 torch.device("cpu"), 0, "toy", lambda m: None, progress=False, keep=keep)
    return module, result["summary"]


def test_fit_stops_patience_epochs_after_the_best_and_restores_it():
    module, summary = _fit(patience=3)
    best = summary["best_epoch"]
    assert summary["stopped_early"] and summary["epochs_run"] == best + 3
    assert abs(float(module.w.detach()) - 1.0) < 0.11  # the best epoch's weight, not the last one's (~1.3)
    _, longer = _fit(patience=None)
    assert not longer["stopped_early"] and longer["epochs_run"] == 40
    assert longer["best_epoch"] == best  # stopping early loses nothing: same best epoch


def test_fit_can_keep_the_last_epoch_and_still_record_the_best():
    module, summary = _fit(patience=None, keep="last")
    _, best_run = _fit(patience=None)
    assert summary["kept_epoch"] == summary["epochs_run"] == 40
    assert summary["best_epoch"] == best_run["best_epoch"] == best_run["kept_epoch"] < 40
    assert float(module.w.detach()) > 3.0  # 40 steps of 0.1 from 0, not the best epoch's ~1.0
    with pytest.raises(ValueError, match="keep must be"):
        _fit(patience=None, keep="first")


def test_fit_gives_freed_memory_back_to_the_system(monkeypatch):
    """fit ends with release_freed_memory (also when training fails), and that trims glibc's heap:
    pages of freed blocks between live ones, which glibc would keep, leave the process."""
    import pysave.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "release_freed_memory", lambda: calls.append(1) or True)
    _fit(patience=None, epochs=3)
    assert calls == [1]
    with pytest.raises(ValueError, match="keep must be"):
        _fit(patience=None, keep="first")
    assert calls == [1, 1]
    monkeypatch.undo()
    if not sys.platform.startswith("linux"):  # no glibc: nothing to trim, and it says so
        assert not train_module.release_freed_memory()
        return

    def rss_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024

    # 64 KB blocks come from glibc's heap (under its mmap threshold); freeing every other one
    # leaves holes that free() cannot return, only a trim can.
    blocks = [np.ones(8192) for _ in range(4000)]  # ~256 MB
    del blocks[::2]
    before = rss_mb()
    assert train_module.release_freed_memory()
    assert before - rss_mb() > 64  # ~128 MB of holes
    del blocks


def _spy_on_fit(monkeypatch, run_epochs=None) -> dict:
    """Record what SAVE.train hands fit for each stage (by its label, "VAE" or "flow"): epochs,
    steps per epoch, warm-up and patience. With ``run_epochs`` the stage really trains only that many."""
    seen = {}
    real_fit = model_module.fit

    def spy(module, loss_fn, train_batches, val_batches, epochs, steps, lr, wd, warmup, patience, *args, **kwargs):
        seen[args[2]] = {"epochs": epochs, "steps": steps, "warmup": warmup, "patience": patience, "keep": kwargs.get("keep", "best")}
        return real_fit(module, loss_fn, train_batches, val_batches, run_epochs or epochs, steps, lr, wd, warmup, patience,
                        *args, **kwargs)

    monkeypatch.setattr(model_module, "fit", spy)
    return seen


def test_the_vae_stops_early_and_the_flow_runs_all_its_epochs_and_keeps_the_last(pbmc_small, monkeypatch):
    seen = _spy_on_fit(monkeypatch)
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    model = pysave.SAVE(pbmc_small, verbose=False, **TINY)
    model.train(max_epochs=2, flow_epochs=3, batch_size=128, early_stopping_patience=5, progress=False, device="cpu")
    assert seen["VAE"]["steps"] == 3  # 360 training cells / 128
    assert (seen["VAE"]["patience"], seen["VAE"]["keep"]) == (5, "best")
    assert (seen["flow"]["patience"], seen["flow"]["keep"]) == (None, "last")
    flow = model.training_summary["flow"]
    assert flow["kept_epoch"] == flow["epochs_run"] == 3 and len(model.history["flow_validation_loss"]) == 3
    assert model.training_summary["vae"]["kept_epoch"] == model.training_summary["vae"]["best_epoch"]
    seen.clear()
    model = pysave.SAVE(pbmc_small, verbose=False, **TINY)
    model.train(max_epochs=2, flow_epochs=2, batch_size=128, early_stopping=False, progress=False, device="cpu")
    assert seen["VAE"]["patience"] is None and seen["flow"]["patience"] is None


def test_vae_warmup_is_short_and_the_flow_ramps_over_a_quarter(pbmc_small, monkeypatch):
    seen = _spy_on_fit(monkeypatch, run_epochs=1)  # one epoch is enough: only the schedule handed to fit is checked
    pysave.SAVE.setup_anndata(pbmc_small, ["cell_type"])
    for max_epochs, flow_epochs, given, vae_warmup, flow_warmup in [(40, 80, None, model_module.VAE_WARMUP_EPOCHS, 20),
                                                                      (4, 8, None, 1, 2), (40, 80, 3, 3, 3)]:
        model = pysave.SAVE(pbmc_small, verbose=False, **TINY)
        model.train(max_epochs=max_epochs, flow_epochs=flow_epochs, warmup_epochs=given, progress=False, device="cpu")
        assert (seen["VAE"]["epochs"], seen["VAE"]["warmup"]) == (max_epochs, vae_warmup)
        assert (seen["flow"]["epochs"], seen["flow"]["warmup"]) == (flow_epochs, flow_warmup)
    with pytest.raises(pysave.PySaveError, match="warmup_epochs must be 0"):
        model.train(max_epochs=2, warmup_epochs=-1, progress=False, device="cpu")
    assert model.training_summary["warmup_epochs"] == {"vae": 3, "flow": 3}  # the failed call changed nothing


def test_collapse_message_names_the_fix_that_fits_the_kl_weight():
    high = model_module.collapse_message(0, 128, 0.5)
    assert "only 0 of the 128 latent dimensions" in high and "lower kl_weight (this model: 0.5" in high
    default = model_module.collapse_message(1, 128, model_module.DEFAULTS["kl_weight"])
    assert "lower kl_weight" not in default and "check the input" in default


def test_active_latent_dims_counts_dimensions_that_vary_across_cells():
    mu = torch.zeros(50, 4)
    mu[:, 1] = torch.linspace(-1, 1, 50)  # variance ~0.35
    mu[:, 2] = torch.linspace(-0.05, 0.05, 50)  # variance ~0.0009: not in use
    assert model_module.active_latent_dims(mu) == 1
    assert model_module.active_latent_dims(mu, batch=7) == 1  # accumulated over batches: the same
    assert model_module.active_latent_dims(mu, rows=np.arange(0, 50, 2)) == 1
    assert model_module.active_latent_dims(mu[:1]) == 4  # one cell: nothing to judge
    offset = mu + 1000.0  # a large mean must not swamp the variance (float64 sums)
    assert model_module.active_latent_dims(offset) == 1


def test_adamw_is_fused_on_the_cpu_and_a_checkpoint_from_before_resumes_unfused(tmp_path):
    from pysave.io import load_checkpoint, save_checkpoint

    fused_flags = []

    def keep(state):  # written at once, as SAVE.train does: the live tensors change after this
        fused_flags.append(state["optimizer"]["param_groups"][0]["fused"])
        save_checkpoint(str(tmp_path / f"epoch{state['epoch']}"), state)

    def run(resume=None):
        torch.manual_seed(0)
        module = _Drifting()
        fit(module, _loss(module), lambda epoch: [torch.zeros(1)], None, 4, 1, 0.1, 0.01, 1, None,
            torch.device("cpu"), 0, "toy", lambda m: None, progress=False, resume=resume,
            on_checkpoint=keep, checkpoint_every=1)
        return float(module.w.detach())

    uninterrupted = run()
    assert fused_flags == [True, True, True]  # the fused kernel on the CPU
    saved = load_checkpoint(str(tmp_path / "epoch2"))  # through safetensors + JSON, as --resume reads it
    assert saved["optimizer"]["param_groups"][0]["fused"] is True
    assert run(saved) == uninterrupted  # resumed fused: the same weight to the last bit
    # A checkpoint written before the fused kernel (its groups say None) keeps the loop it began with.
    older = load_checkpoint(str(tmp_path / "epoch2"))
    older["optimizer"]["param_groups"][0]["fused"] = None
    fused_flags.clear()
    run(older)
    assert fused_flags == [None]


def test_clipping_on_the_cpu_is_the_foreach_form_and_gives_the_loops_weights(monkeypatch):
    """The foreach form (two calls a step, not two per parameter) must clip exactly as torch's loop."""
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = []

    def run(foreach_override):
        def clip(parameters, max_norm, **kwargs):
            calls.append(kwargs.get("foreach"))
            if foreach_override is not None:
                kwargs["foreach"] = foreach_override
            norm = real_clip(parameters, max_norm, **kwargs)
            assert float(norm) > max_norm  # the gradients are really clipped, every step
            return norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.GELU(), torch.nn.Linear(33, 5))
        x = torch.randn(64, 7, generator=torch.Generator().manual_seed(1))

        def loss(batch, generator):
            return {"loss": 1e3 * module(batch).pow(2).mean()}
        fit(module, loss, lambda epoch: [x, x[:40]], None, 3, 2, 0.05, 0.01, 1, None,
            torch.device("cpu"), 0, "toy", lambda m: None, progress=False)
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    product = run(None)
    assert set(calls) == {True}  # the product asks for the foreach form on the CPU
    loop = run(False)
    assert torch.equal(product, loop)  # and it gives the loop's weights to the last bit


def test_a_checkpoint_of_the_best_keeping_rule_resumes_to_the_last_epoch_kept(tmp_path):
    """A flow checkpoint written before the flow kept its last epoch (it holds best weights and a
    patience run) resumes under keep="last" to exactly the uninterrupted keep="last" run: the
    weights of each epoch do not depend on the stopping rule."""
    from pysave.io import load_checkpoint, save_checkpoint

    def run(keep, patience, resume=None):
        torch.manual_seed(0)
        module = _Drifting()
        fit(module, _loss(module), lambda epoch: [torch.zeros(1)], lambda: [torch.zeros(2)], 30, 1, 0.1, 0.0, 1, patience,
            torch.device("cpu"), 0, "toy", lambda m: None, progress=False, resume=resume, keep=keep,
            on_checkpoint=lambda state: save_checkpoint(str(tmp_path / f"epoch{state['epoch']}"), state), checkpoint_every=5)
        return float(module.w.detach())

    assert abs(run("best", 100) - 1.0) < 0.11  # the old rule: the best epoch's weight (checkpoints written on the way)
    older = load_checkpoint(str(tmp_path / "epoch15"))
    assert older["best_state"] is not None and older["best_epoch"] < 15
    assert run("last", None, older) == run("last", None) > 2.9
    untouched = _Drifting()  # a bad keep is refused before the checkpoint is loaded into the module
    with pytest.raises(ValueError, match="keep must be"):
        fit(untouched, _loss(untouched), lambda epoch: [torch.zeros(1)], None, 30, 1, 0.1, 0.0, 1, None,
            torch.device("cpu"), 0, "toy", lambda m: None, progress=False, resume=older, keep="first")
    assert float(untouched.w.detach()) == 0.0
