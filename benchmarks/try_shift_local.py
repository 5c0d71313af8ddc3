"""Local shifts: each control cell's own displacement, matched by optimal transport, instead of
its stratum's mean shift? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_shift_local.py --dataset kang_muscat --seeds 0 1 --model-dir /tmp/kres
    .venv/bin/python benchmarks/try_shift_local.py --dataset kang --seeds 0 1 2 3 --max-cells 50 --tag _max50

``transfer(via="shift")`` gives a held-out type's control cell a kernel-weighted mean of the
other types' mean latent shifts (stimulated mean - control mean), weighted by the cell's
distance to each type's control cells in 30 expression PCs. Here each training stratum's control
and stimulated cells are matched by exact optimal transport in the latent (POT ``ot.emd``,
uniform weights, squared Euclidean cost), so every training control cell gets its own
displacement (its barycentric image minus itself); a held-out cell takes the mean displacement of
its k nearest training control cells (all strata pooled) in the expression PCs. Where the
held-out type sits between strata (CD14+ monocytes next to the FCGR3A+ ones), its neighbours
are the cells of the nearest stratum that resemble it most. The change is decoded as the product
does (under the target, input + change). Same kept models as try_shift_weights.py. ``--max-cells``
matches a sample of each stratum only (what a model that keeps some of its training cells could
do). The unseen-combination task (run_benchmarks.run_unseen's split: |B| control cells moved,
scored against half A of the held-out cells) is scored for the product and k = 30. Writes
results/shift_local_<dataset><tag>.json.
"""
from __future__ import annotations

import json

import numpy as np

import shift_cases  # beside this script

NEIGHBOURS = (10, 30, 100)
UNSEEN_NEIGHBOURS = 30  # declared on kang_muscat's perturbation scores before Kang was scored
# --variants (2026-12-01, sixth session; k = 30): "within": the k nearest control cells of *each*
# stratum, the strata then weighed by the product's kernel over their means (the pooled search lets
# one neighbouring type take every neighbour); "sink": the displacement from an entropic plan
# (POT sinkhorn, reg SINKHORN_REG x the median cost), a smoother barycentric map than the
# exact plan's one-to-one matches; "mix": the mean of the product's and the local shift.
VARIANTS = ("within30", "sink30", "mix30")
SINKHORN_REG = 0.05


def main():
    import anndata as ad
    import ot
    import torch
    from scipy.spatial.distance import cdist

    import run_benchmarks as RB
    from pysave import metrics as M
    from pysave.shift import SHIFT_BANDWIDTH, _stratum_weights

    def options(ap):
        ap.add_argument("--max-cells", type=int, help="match at most this many cells of each side of a stratum (drawn by "
                                                      "the seed), as a model that keeps a sample of its training cells would")
        ap.add_argument("--variants", action="store_true", help="also score within{k}, sink{k} and mix{k} (see VARIANTS)")

    args = shift_cases.parse_args(__doc__, options)
    rows = []
    for case in shift_cases.cases(args):
        model, ctrl, stim = case.model, case.ctrl, case.stim
        keys = model.registry["condition_keys"]
        train_mu = model._encode(model._prepare(case.train))[0].numpy().astype(np.float64)
        project, train_pc = shift_cases.expression_pcs(case)

        displacement, places, deltas, origins, owners, smooth = [], [], [], [], [], []
        for s in case.strata:
            c = np.flatnonzero((case.train_types == s) & (case.train_cond == ctrl))
            t = np.flatnonzero((case.train_types == s) & (case.train_cond == stim))
            deltas.append(train_mu[t].mean(0) - train_mu[c].mean(0))
            origins.append(train_pc[c].mean(0))
            if args.max_cells:
                rng = np.random.default_rng([case.seed, len(displacement)])
                c, t = (np.sort(rng.choice(x, min(len(x), args.max_cells), replace=False)) for x in (c, t))
            cost = ot.dist(train_mu[c], train_mu[t])
            plan = ot.emd(ot.unif(len(c)), ot.unif(len(t)), cost)
            displacement.append(plan @ train_mu[t] / plan.sum(1, keepdims=True) - train_mu[c])
            if args.variants:
                soft = ot.sinkhorn(ot.unif(len(c)), ot.unif(len(t)), cost / np.median(cost), SINKHORN_REG, method="sinkhorn_log")
                smooth.append(soft @ train_mu[t] / soft.sum(1, keepdims=True) - train_mu[c])
            places.append(train_pc[c])
            owners.append(np.full(len(c), s, dtype=object))
        per_stratum = list(zip(displacement, places))
        displacement, places = np.concatenate(displacement), np.concatenate(places)
        smooth = np.concatenate(smooth) if smooth else None

        def predictions(query, names):
            """Each named shift's input + change for the control cells ``query``, and their neighbours."""
            prep = model._prepare(query)
            home_codes = prep.codes.copy()
            target_codes = home_codes.copy()
            target_codes[:, keys.index(case.ck)] = model._code_of(case.ck, stim)
            mu = model._encode(prep)[0]
            own = M.log_normalized(query[:, model.genes])
            cells_pc = project(own)
            nearest = np.argsort(cdist(cells_pc, places, "sqeuclidean"), axis=1)
            home = model._decode(mu, home_codes)
            out = {}
            kernel = _stratum_weights(cells_pc, np.stack(origins), SHIFT_BANDWIDTH)
            for name in names:
                k = int(name.lstrip("abcdefghijklmnopqrstuvwxyz") or 0)
                if name == "product":
                    shift = kernel @ np.stack(deltas)
                elif name.startswith("knn"):
                    shift = displacement[nearest[:, :k]].mean(1)
                elif name.startswith("sink"):
                    shift = smooth[nearest[:, :k]].mean(1)
                elif name.startswith("mix"):
                    shift = (kernel @ np.stack(deltas) + displacement[nearest[:, :k]].mean(1)) / 2
                else:  # within
                    shift = sum(kernel[:, [i]] * d[np.argsort(cdist(cells_pc, p, "sqeuclidean"), axis=1)[:, :k]].mean(1)
                                for i, (d, p) in enumerate(per_stratum))
                moved = mu + torch.from_numpy(np.ascontiguousarray(shift, dtype=np.float32))
                out[name] = np.maximum(own + model._decode(moved, target_codes) - home, 0).astype(np.float32)
            return out, nearest

        row = {"seed": case.seed, "type": case.type}
        extra = list(VARIANTS) if args.variants else []
        predicted, nearest = predictions(case.query, ["product", *(f"knn{k}" for k in NEIGHBOURS), *extra])
        for name, x in predicted.items():
            degs, every = shift_cases.score(case, x - case.own)
            row.update({f"{name}_degs_r2": degs, f"{name}_all_r2": every})
        # The unseen-combination task: |B| control cells moved, scored against half A (run_unseen's protocol).
        reference, floor, query = shift_cases.unseen_split(case)
        for name, x in predictions(query, ["product", f"knn{UNSEEN_NEIGHBOURS}", *extra])[0].items():
            generated = ad.AnnData(x, obs=query.obs.copy(), var=query[:, model.genes].var.copy())
            generated.obs[case.ck], generated.obs[case.tk] = stim, case.type
            scored = M.generation_fidelity(reference, generated, [case.ck, case.tk], floor=floor, seed=case.seed)
            g = scored["per_group"].iloc[0]
            row.update({f"unseen_{name}_mean_r2": float(g["mean_r2"]), f"unseen_{name}_W1_over_floor": float(g["W1"] / g["floor_W1"]),
                        f"unseen_{name}_MMD": float(g["MMD"]), "unseen_floor_mean_r2": float(g["floor_mean_r2"])})
        owner = np.concatenate(owners)
        for k in NEIGHBOURS:  # where the neighbours come from
            picked = owner[nearest[:, :k]]
            row.update({f"knn{k}_share_{s}": float((picked == s).mean()) for s in case.strata})
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    scores = [{k: v for k, v in r.items() if "_share_" not in k} for r in rows]
    shares = [{k: v for k, v in r.items() if k in ("seed", "type") or "_share_" in k} for r in rows]
    RB.write_row_summary(f"shift_local_{args.dataset}{args.tag}", scores, ("seed", "type"), dataset=args.dataset,
                         seeds=args.seeds, params=args.model_params, neighbours=list(NEIGHBOURS), n_pcs=shift_cases.N_PCS,
                         neighbour_shares=shares)


if __name__ == "__main__":
    main()
