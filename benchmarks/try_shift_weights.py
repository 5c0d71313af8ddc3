"""Where should the latent shift weigh its strata, and under which conditions should it decode?
(benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_shift_weights.py --dataset kang_muscat --seeds 0 1 --model-dir /tmp/kres
    .venv/bin/python benchmarks/try_shift_weights.py --dataset kang_muscat --params '{"kl_weight": 0.5}' --tag _kl0.5

``transfer(via="shift", output="input_plus_change")`` gives each control cell of a held-out type
the other types' latent shifts (stimulated mean - control mean), weighted by a Gaussian kernel on
the cell's distance to each type's control cells, and adds the decoded change to the cell's own
log1p(CP10k). Until 2026-12-01 the distance was measured in the latent of the encoder, which is
told the cell type; since then in 30 principal components of the training cells' expression.
Weights compared (all on the same kept model of each held-out type and seed):
- ``latent``: the encoder means under the cells' own conditions (bandwidth 0.5, the old product);
- ``expr_bw{0.25,0.5,1}``: 30 PCs of log1p(CP10k) fitted on the training cells (0.5: the product);
- ``equal``: equal weights (scGen);
- ``oracle``: the held-out type's own shift, from its real stimulated cells (an upper bound).
Each is decoded two ways: under the target conditions (``typed``, the product), or with the cell
type masked on both sides of the change (``type_masked``: the decoder then sees only combinations
it was trained on, since the VAE was trained with condition masking). Writes
results/shift_weights_<dataset><tag>.json.
"""
from __future__ import annotations

import json

import numpy as np

import shift_cases  # beside this script


def main():
    import torch

    import run_benchmarks as RB
    from pysave.shift import SHIFT_BANDWIDTH, _stratum_weights

    args = shift_cases.parse_args(__doc__)
    rows = []
    for case in shift_cases.cases(args):
        model, t, ctrl, stim = case.model, case.type, case.ctrl, case.stim
        keys = model.registry["condition_keys"]
        jc, jt = keys.index(case.ck), keys.index(case.tk)
        type_mask = model.vae.condition_embedding.mask_codes[jt]
        strata = case.strata

        # The strata: the other types, each with its control and stimulated training cells.
        prep = model._prepare(case.query)
        mu = model._encode(prep)[0]
        train_mu = model._encode(model._prepare(case.train))[0].numpy()
        means = {(c, s): train_mu[(case.train_types == s) & (case.train_cond == c)].mean(0) for s in strata for c in (ctrl, stim)}
        deltas = np.stack([means[(stim, s)] - means[(ctrl, s)] for s in strata])
        stimulated = model._prepare(case.real[case.real.obs[case.ck].astype(str) == stim].copy())
        oracle = model._encode(stimulated)[0].numpy().mean(0) - mu.numpy().mean(0)

        cells_pc, origins_pc = shift_cases.expression_places(case)
        origins_latent = np.stack([means[(ctrl, s)] for s in strata])
        weights = {"latent": _stratum_weights(mu.numpy(), origins_latent, SHIFT_BANDWIDTH),
                   **{f"expr_bw{b:g}": _stratum_weights(cells_pc, origins_pc, b) for b in (0.25, 0.5, 1.0)},
                   "equal": np.full((len(mu), len(strata)), 1.0 / len(strata))}

        row = {"seed": case.seed, "type": t}
        for decoding in ("typed", "type_masked"):
            home_codes = prep.codes.copy()
            if decoding == "type_masked":
                home_codes[:, jt] = type_mask
            target_codes = home_codes.copy()
            target_codes[:, jc] = model._code_of(case.ck, stim)
            home = model._decode(mu, home_codes)
            for name, shift in [*((n, w @ deltas) for n, w in weights.items()), ("oracle", np.tile(oracle, (len(mu), 1)))]:
                moved = mu + torch.from_numpy(np.ascontiguousarray(shift, dtype=np.float32))
                degs, every = shift_cases.score(case, model._decode(moved, target_codes) - home)
                row.update({f"{decoding}_{name}_degs_r2": degs, f"{decoding}_{name}_all_r2": every})
        row.update({f"weight_{name}_{s}": float(w[:, i].mean()) for name in ("latent", "expr_bw0.5")
                    for i, s in enumerate(strata) for w in [weights[name]]})
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    # The weight columns name each held-out type's strata, so they are kept apart from the scores' means.
    scores = [{k: v for k, v in r.items() if not k.startswith("weight_")} for r in rows]
    mean_weights = [{k: v for k, v in r.items() if k in ("seed", "type") or k.startswith("weight_")} for r in rows]
    RB.write_row_summary(f"shift_weights_{args.dataset}{args.tag}", scores, ("seed", "type"), dataset=args.dataset,
                         seeds=args.seeds, params=args.model_params, bandwidth=SHIFT_BANDWIDTH, n_pcs=shift_cases.N_PCS,
                         mean_weights=mean_weights)


if __name__ == "__main__":
    main()
