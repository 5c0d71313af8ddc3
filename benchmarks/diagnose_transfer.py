"""Why perturbation R^2 stops short: how much of the stimulation effect the transfer carries (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/diagnose_transfer.py --model-dir DIR --seed 0 --types B CD4T

Takes the held-out-type Kang models kept by ``run_benchmarks.py --task perturbation --model-dir
DIR`` (``--params``: the same JSON as there, for models trained with other parameters) and, for
each held-out type, compares the transfer of its control cells with the real stimulated cells on
the scoring protocol's top-100 DEGs:

- ``effect_slope`` / ``effect_r``: the predicted effect (predicted mean - control mean) regressed
  on the real one (real stimulated mean - control mean), gene by gene. A slope of 1 carries the
  whole effect; R^2 of per-gene means is scale-free, but not offset-free, so a shrunk effect
  lowers it;
- ``induction``: per-cell quantiles (10/25/50/75/90 %) of the mean of the 5 most induced DEGs,
  predicted and real: whether the whole type moves, or only some of its cells;
- ``seen_slope``: the same slope for the *other* types' control cells moved to "stimulated", a
  combination the model was trained on (how far guidance overshoots where the model knows);
- every number for ``via="flow"`` at several guidance weights (``--guidance``), and for
  ``via="shift"`` (the training cells' mean latent shift, scGen's arithmetic in SAVE's latent).
Writes results/transfer_diagnosis_s<seed><tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def slope(real_effect, predicted_effect) -> tuple[float, float]:
    """Least-squares slope of the predicted effect on the real one, and their Pearson r."""
    return float(np.polyfit(real_effect, predicted_effect, 1)[0]), float(np.corrcoef(real_effect, predicted_effect)[0, 1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--types", nargs="+", required=True)
    p.add_argument("--guidance", nargs="+", type=float, default=[1.0, 2.0, 3.0])
    p.add_argument("--params", default="{}", help="the --params the models were trained with in run_benchmarks.py")
    p.add_argument("--tag", default="", help="suffix of the result file")
    args = p.parse_args()
    import torch

    import pysave
    from pysave import metrics as M
    sys.path.insert(0, HERE)
    import eval_generation as E
    import run_benchmarks as RB

    torch.set_num_threads(1)
    adata, ck, tk, ctrl, stim, cond, types = RB.perturbation_data("kang")
    rows = []
    for t in args.types:
        path = os.path.join(args.model_dir, E.model_name("kang", args.seed, 60, {**RB.FAST, **json.loads(args.params)}, held_out=t))
        if not os.path.exists(path):
            raise SystemExit(f"no kept model {path}: train it with run_benchmarks.py --task perturbation --model-dir")
        model = pysave.SAVE.load(path, verbose=False, device="cpu")
        genes = list(model.genes)
        query, real_stim = adata[(types == t) & (cond == ctrl)].copy(), adata[(types == t) & (cond == stim)].copy()
        c, s = (M.log_normalized(a[:, genes]) for a in (query, real_stim))
        others_ctrl = adata[(types != t) & (cond == ctrl)].copy()
        oc, os_ = M.log_normalized(others_ctrl[:, genes]), M.log_normalized(adata[(types != t) & (cond == stim)][:, genes])
        for via, w in [("flow", w) for w in args.guidance] + [("shift", None)]:
            how = dict(via=via, guidance=w) if via == "flow" else dict(via=via)
            pred = model.transfer(query, {ck: stim}, output="mean", seed=args.seed, **how)
            pr = np.asarray(pred.X)
            scored = M.perturbation_agreement(query, real_stim, pred)
            idx = [genes.index(g) for g in scored["degs"]]
            real_effect = (s.mean(0) - c.mean(0))[idx]
            eff_slope, eff_r = slope(real_effect, (pr.mean(0) - c.mean(0))[idx])
            top = [idx[i] for i in np.argsort(-real_effect)[:5]]
            seen = np.asarray(model.transfer(others_ctrl, {ck: stim}, output="mean", seed=args.seed, **how).X)
            seen_slope, _ = slope((os_.mean(0) - oc.mean(0))[idx], (seen.mean(0) - oc.mean(0))[idx])
            row = {"type": t, "via": via, "guidance": w, "degs_r2": scored["top100_degs"]["r2"], "all_r2": scored["all_genes"]["r2"],
                   "effect_slope": eff_slope, "effect_r": eff_r, "seen_slope": seen_slope,
                   "top5_induced": [genes[g] for g in top],
                   "induction_predicted": np.quantile(pr[:, top].mean(1), QUANTILES).tolist(),
                   "induction_real": np.quantile(s[:, top].mean(1), QUANTILES).tolist(),
                   "induction_control": np.quantile(c[:, top].mean(1), QUANTILES).tolist()}
            rows.append(row)
            print(f"{t} {via}" + (f" w={w:g}" if w else "") + f": R2 DEGs {row['degs_r2']:.3f} all {row['all_r2']:.3f}; effect slope {eff_slope:.2f} (r {eff_r:.2f}), "
                  f"seen combinations {seen_slope:.2f}; top-5 induction median predicted {row['induction_predicted'][2]:.2f} "
                  f"real {row['induction_real'][2]:.2f} control {row['induction_control'][2]:.2f}", flush=True)
    out = os.path.join(HERE, "results", f"transfer_diagnosis_s{args.seed}{args.tag}.json")
    with open(out + ".tmp", "w") as fh:
        json.dump({"seed": args.seed, "params": json.loads(args.params), "quantiles": QUANTILES, "rows": rows}, fh, indent=1)
    os.replace(out + ".tmp", out)
    print("wrote", out)


if __name__ == "__main__":
    main()
