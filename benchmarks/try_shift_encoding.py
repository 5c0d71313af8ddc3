"""Under which conditions should the encoder place the cells whose latent shift is taken?
(benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_shift_encoding.py --dataset kang_muscat --seeds 0 1 --model-dir /tmp/kres
    .venv/bin/python benchmarks/try_shift_encoding.py --dataset kang_muscat --params '{"kl_weight": 0.5}' --tag _kl0.5

``transfer(via="shift", output="input_plus_change")`` encodes the training cells and the input
cells under their own conditions, takes each stratum's shift (stimulated mean - control mean of the
encoder means) and decodes the change under the target. The encoder is told the stimulation and
the cell type, so part of the response can sit in the label rather than in the latent, and the
latent shift of one type may carry less of it to another. The VAE was trained with condition
masking (0.6), so the encoder also knows [MASK]. Encodings compared (same kept model per held-out
type and seed; strata weighed in the expression PCs at bandwidth 0.5, as the product does; the
change decoded under the target, as the product does):
- ``own``: every condition given (the product);
- ``condition_masked``: the stimulation masked for every cell (train and input);
- ``type_masked``: the cell type masked;
- ``all_masked``: both masked;
- ``unconditional``: both masked in the encoding and in both decodings, so the change is the
  latent shift alone through a decoder told nothing (scGen's arithmetic on pysave's VAE).
Writes results/shift_encoding_<dataset><tag>.json.
"""
from __future__ import annotations

import json

import numpy as np

import shift_cases  # beside this script

ENCODINGS = {"own": (), "condition_masked": ("condition",), "type_masked": ("type",), "all_masked": ("condition", "type")}


def main():
    import torch

    import run_benchmarks as RB
    from pysave.shift import SHIFT_BANDWIDTH, _stratum_weights

    args = shift_cases.parse_args(__doc__)
    rows = []
    for case in shift_cases.cases(args):
        model, ctrl, stim, strata = case.model, case.ctrl, case.stim, case.strata
        keys = model.registry["condition_keys"]
        column = {"condition": keys.index(case.ck), "type": keys.index(case.tk)}
        mask_codes = model.vae.condition_embedding.mask_codes
        prep, train_prep = model._prepare(case.query), model._prepare(case.train)
        home_codes = prep.codes.copy()
        target_codes = home_codes.copy()
        target_codes[:, column["condition"]] = model._code_of(case.ck, stim)
        blank = home_codes.copy()
        for j in column.values():
            blank[:, j] = mask_codes[j]
        weights = _stratum_weights(*shift_cases.expression_places(case), SHIFT_BANDWIDTH)

        def encode(p, masked):
            codes = p.codes
            p.codes = codes.copy()
            for name in masked:
                p.codes[:, column[name]] = mask_codes[column[name]]
            try:
                return model._encode(p)[0]
            finally:
                p.codes = codes

        row = {"seed": case.seed, "type": case.type}
        for name, masked in [*ENCODINGS.items(), ("unconditional", ("condition", "type"))]:
            mu = encode(prep, masked)
            train_mu = encode(train_prep, masked).numpy()
            means = {(c, s): train_mu[(case.train_types == s) & (case.train_cond == c)].mean(0) for s in strata for c in (ctrl, stim)}
            deltas = np.stack([means[(stim, s)] - means[(ctrl, s)] for s in strata])
            moved = mu + torch.from_numpy(np.ascontiguousarray(weights @ deltas, dtype=np.float32))
            before, after = (blank, blank) if name == "unconditional" else (home_codes, target_codes)
            degs, every = shift_cases.score(case, model._decode(moved, after) - model._decode(mu, before))
            row.update({f"{name}_degs_r2": degs, f"{name}_all_r2": every,
                        f"{name}_shift_norm": float(np.linalg.norm(deltas, axis=1).mean())})
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    RB.write_row_summary(f"shift_encoding_{args.dataset}{args.tag}", rows, ("seed", "type"), dataset=args.dataset,
                         seeds=args.seeds, params=args.model_params, bandwidth=SHIFT_BANDWIDTH, n_pcs=shift_cases.N_PCS,
                         encodings={k: list(v) for k, v in ENCODINGS.items()},
                         unconditional="both masked in the encoding and in both decodings")


if __name__ == "__main__":
    main()
