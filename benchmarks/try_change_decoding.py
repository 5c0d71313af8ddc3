"""Which decoding carries the predicted change? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_change_decoding.py --dataset kang_muscat --seeds 0 1 --model-dir /tmp/kres

``transfer(via="shift", output="input_plus_change")`` predicts a held-out type's stimulated cells as
each control cell's own log1p(CP10k) plus a change, clipped at 0. The change can be decoded four
ways from the same encoder mean ``mu`` and latent shift ``delta``:
- ``both`` (the product): decode(mu + delta, stimulated) - decode(mu, control);
- ``latent``: decode(mu + delta, control) - decode(mu, control): scGen's arithmetic, the label kept;
- ``label``: decode(mu, stimulated) - decode(mu, control): the label alone (via="decoder");
- ``masked``: decode(mu + delta, [MASK]) - decode(mu, [MASK]): the latent alone, the condition masked.
Reuses the harness's kept held-out models (fast network, VAE masking 0.6, 60 epochs; trained when
missing) and scores each with the perturbation protocol. kang_muscat is the development set; Kang
is scored only with what kang_muscat chose. The strata are weighed by expression, as the product
does since 2026-12-01 (the committed results, 2026-12-01 second session, weighed them in the
latent). Writes results/change_decoding_<dataset><tag>.json.
"""
from __future__ import annotations

import json

import shift_cases  # beside this script

VARIANTS = ("both", "latent", "label", "masked")


def main():
    import run_benchmarks as RB
    from pysave.shift import SHIFT_BANDWIDTH, source_positions

    args = shift_cases.parse_args(__doc__, lambda ap: ap.add_argument("--variants", nargs="+", default=list(VARIANTS),
                                                                      choices=VARIANTS))
    rows = []
    for case in shift_cases.cases(args):
        model = case.model
        prep = model._prepare(case.query, keep_counts=True)
        mu, _ = model._encode(prep)
        j = model.registry["condition_keys"].index(case.ck)
        source = prep.codes
        target = source.copy()
        target[:, j] = model._code_of(case.ck, case.stim)
        masked = source.copy()
        masked[:, j] = model.vae.condition_embedding.mask_codes[j]
        # Strata weighed by the cells' expression, as transfer(via="shift") does since 2026-12-01.
        moved, _ = model._shifted(mu, source, target, [j], SHIFT_BANDWIDTH, "",
                                  expression=lambda stats: source_positions(stats, prep, model.scalers, 1024))
        home = model._decode(mu, source)
        change = {"both": lambda: model._decode(moved, target) - home,
                  "latent": lambda: model._decode(moved, source) - home,
                  "label": lambda: model._decode(mu, target) - home,
                  "masked": lambda: model._decode(moved, masked) - model._decode(mu, masked)}
        row = {"seed": case.seed, "type": case.type}
        for name in args.variants:
            degs, every = shift_cases.score(case, change[name]())
            row.update({f"{name}_degs_r2": degs, f"{name}_all_r2": every})
        rows.append(row)
        print(json.dumps(row), flush=True)
    RB.write_row_summary(f"change_decoding_{args.dataset}{args.tag}", rows, ("seed", "type"), dataset=args.dataset,
                         seeds=args.seeds, params=args.model_params)


if __name__ == "__main__":
    main()
