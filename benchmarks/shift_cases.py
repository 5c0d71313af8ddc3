"""What the latent-shift diagnostics share (try_shift_weights.py, try_shift_encoding.py,
try_change_decoding.py; benchmark code, not a test): their command line, each (seed, held-out
type)'s kept model with its cells, the training cells' places in 30 expression PCs, and the
perturbation score of a predicted change added to the control cells' own expression."""
from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))

N_PCS = 30


def parse_args(doc: str, extra=None) -> argparse.Namespace:
    """--dataset, --seeds, --types, --params, --tag, --model-dir, --threads (and what ``extra(parser)`` adds)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--dataset", default="kang_muscat")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--types", nargs="*")
    ap.add_argument("--params", default="{}", help="pysave parameters over the fast set and VAE masking 0.6, JSON")
    ap.add_argument("--tag", default="", help="suffix of the results file (for --params)")
    ap.add_argument("--model-dir")
    ap.add_argument("--threads", type=int, default=1)
    if extra:
        extra(ap)
    return ap.parse_args()


def cases(args):
    """One namespace per (seed, held-out type): the harness's kept model of that split (fast network,
    VAE masking 0.6, 60 epochs, flow 1 epoch; trained when missing), the training cells, the type's
    control cells (``query``, and ``own``: their log1p(CP10k)) and all its real cells."""
    import torch

    import eval_generation
    import run_benchmarks as RB
    from pysave import metrics as M

    torch.set_num_threads(args.threads)
    adata, ck, tk, ctrl, stim, cond, types = RB.perturbation_data(args.dataset)
    params = {**RB.FAST, "vae_mask_prob": 0.6, **json.loads(args.params)}
    args.model_params = params
    for seed in args.seeds:
        for t in args.types or sorted(set(types)):
            held = RB.held_out_cells(adata, args.dataset, t)
            train = adata[~held].copy()
            model, _ = eval_generation.trained_model(args.dataset, seed, 60, params, train, [ck, tk], None,
                                                     args.model_dir, {"flow_epochs": 1}, held_out=t)
            query = adata[(types == t) & (cond == ctrl)].copy()
            train_types = train.obs[tk].astype(str).to_numpy()
            yield SimpleNamespace(
                seed=seed, type=t, model=model, train=train, query=query, real=adata[types == t].copy(),
                own=M.log_normalized(query[:, model.genes]), ck=ck, tk=tk, ctrl=ctrl, stim=stim,
                train_types=train_types, train_cond=train.obs[ck].astype(str).to_numpy(),
                strata=[s for s in sorted(set(train_types)) if s != t])


def expression_pcs(case):
    """30 PCs of the training cells' log1p(CP10k), fitted on all of them (train() draws up to
    10,000): the projection (log1p(CP10k) -> PCs) and the training cells in them."""
    from sklearn.decomposition import PCA

    from pysave import metrics as M

    train_x = M.log_normalized(case.train[:, case.model.genes])
    pca = PCA(N_PCS, random_state=case.seed).fit(train_x)
    return pca.transform, pca.transform(train_x)


def expression_places(case):
    """The control cells, and each stratum's training control cells (their mean), in ``expression_pcs``."""
    project, train_pc = expression_pcs(case)
    cells_pc = project(case.own)
    origins = np.stack([train_pc[(case.train_types == s) & (case.train_cond == case.ctrl)].mean(0) for s in case.strata])
    return cells_pc, origins


def unseen_split(case):
    """The unseen-combination protocol of run_benchmarks.run_unseen (``run_benchmarks.unseen_split``):
    half A of the held-out (stimulated) cells as ``reference``, half B as ``floor``, |B| of the
    type's control cells as ``query``."""
    import run_benchmarks as RB

    return RB.unseen_split(case.real[case.real.obs[case.ck].astype(str) == case.stim], case.query, case.seed)


def score(case, change) -> tuple[float, float]:
    """R^2 of per-gene means on the top-100 DEGs and on all genes of the control cells' own
    log1p(CP10k) + ``change``, clipped at 0 (the product's output="input_plus_change")."""
    import anndata as ad

    from pysave import metrics as M

    genes = case.model.genes
    pred = ad.AnnData(np.maximum(case.own + change, 0).astype(np.float32), obs=case.query.obs.copy(),
                      var=case.query[:, genes].var.copy())
    pred.obs[case.ck] = case.stim
    s = M.perturbation_evaluation(case.real[:, genes], pred, case.ck, case.ctrl, case.stim, case.tk, n_degs=100, seed=case.seed)
    s = s["per_group"].iloc[0]
    return float(s["degs_r2"]), float(s["all_r2"])
