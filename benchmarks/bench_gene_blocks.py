"""Coherence of gene blocks: built-in gene knowledge vs data-driven vs random embeddings.

For each real dataset in ../shared/data (see MANIFEST.md there) this script

1. takes the 2,000 most variable genes (scanpy ``seurat`` flavour on log1p of counts per 10k)
   and splits the cells at random into two halves, A and B;
2. builds pysave's gene blocks (default layout: 32 balanced blocks) on half A with
   ``embeddings="builtin"``, ``"data"`` and ``"random"`` (5 seeds);
3. scores each block set by
   * GO similarity: per block, the mean Jaccard index of the direct GO-term sets (BP+MF+CC, from
     the shipped org.Hs.eg.db table; mouse genes via their Ensembl human ortholog) over all
     pairs of annotated genes in the block; averaged over blocks;
   * shared specific GO term: the fraction of annotated gene pairs in a block that share a GO
     term annotated to at most 200 human genes (averaged over blocks);
   * co-expression: per block, the mean Pearson correlation of log-normalized expression over
     all gene pairs in the block, computed on the held-out half B (so data-driven blocks, which
     are built from co-expression, are not scored on the cells they were fit to); averaged
     over blocks.
   Random blocks (mean of 5 seeds) estimate the mean over all gene pairs.

Caveat: the built-in embeddings are made from GO term names, so their GO similarity is partly
by construction; co-expression on held-out cells is the independent check for them, and GO
similarity is the independent check for data-driven blocks.

Usage: .venv/bin/python benchmarks/bench_gene_blocks.py [--out benchmarks/results/gene_blocks.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import scanpy as sc
import scipy.sparse as sp

from pysave import gene_knowledge
from pysave.blocks import build_gene_blocks

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PYSAVE_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = [
    ("pbmc4k_soupx_2170.h5ad", "human"),
    ("baron2016_pancreas_human_came_2142.h5ad", "human"),
    ("baron2016_pancreas_mouse_came_1886.h5ad", "mouse"),
    ("scvelo_pancreas_e15_supercell_3696.h5ad", "mouse"),
]
N_GENES = 2000
RANDOM_SEEDS = 5


def prepare(path: Path, seed: int = 0):
    adata = sc.read_h5ad(path)
    adata.var_names_make_unique()
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    keep = np.asarray((counts > 0).sum(0)).ravel() >= 3
    adata = adata[:, keep].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    n_top = min(N_GENES, adata.n_vars)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    logn = sp.csr_matrix(adata.X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(adata.n_obs)
    half_a, half_b = np.sort(perm[: adata.n_obs // 2]), np.sort(perm[adata.n_obs // 2:])
    xa = logn[half_a]
    maxabs = np.asarray(xa.max(axis=0).todense()).ravel()
    maxabs[maxabs == 0] = 1.0
    x01_a = sp.csr_matrix(xa @ sp.diags(1.0 / maxabs))
    return list(adata.var_names.astype(str)), x01_a, logn[half_b].toarray()


SPECIFIC_TERM_GENES = 200  # a GO term on at most this many human genes counts as specific


def block_scores(labels: np.ndarray, corr: np.ndarray, go_sets: list[set], specific: set | None = None) -> dict:
    go_means, co_means, shared = [], [], []
    for b in np.unique(labels):
        members = np.flatnonzero(labels == b)
        c = corr[np.ix_(members, members)]
        iu = np.triu_indices(len(members), 1)
        vals = c[iu]
        co_means.append(float(np.nanmean(vals)) if len(vals) else np.nan)
        ann = [go_sets[i] for i in members if go_sets[i]]
        jac, share = [], []
        for i in range(len(ann)):
            for j in range(i + 1, len(ann)):
                inter = len(ann[i] & ann[j])
                jac.append(inter / len(ann[i] | ann[j]))
                share.append(bool(specific is not None and (ann[i] & ann[j] & specific)))
        if jac:
            go_means.append(float(np.mean(jac)))
            shared.append(float(np.mean(share)))
    return {"go_jaccard": float(np.nanmean(go_means)), "pairs_sharing_specific_go_term": float(np.nanmean(shared)),
            "coexpression_r": float(np.nanmean(co_means))}


def specific_terms() -> set:
    counts: dict[str, int] = {}
    for ids in gene_knowledge.gene_go().values():
        for t in ids:
            counts[t] = counts.get(t, 0) + 1
    return {t for t, n in counts.items() if n <= SPECIFIC_TERM_GENES}


def run_dataset(name: str, species: str) -> dict:
    t0 = time.time()
    genes, x01_a, logn_b = prepare(SHARED / name)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(logn_b.T)
    mapped, how = gene_knowledge.human_symbols(genes, species)
    annot = gene_knowledge.gene_go()
    go_sets = [set(annot.get(m, ())) if m else set() for m in mapped]
    spec = specific_terms()
    res = {"dataset": name, "species": species, "n_genes": len(genes), "n_cells_half_b": int(logn_b.shape[0]),
           "matched_to_builtin": int(sum(m is not None for m in mapped)),
           "matched_by": {k: int(sum(h == k for h in how)) for k in sorted(set(how))},
           "genes_with_go": int(sum(bool(s) for s in go_sets)), "methods": {}}
    quiet = lambda *_: None  # noqa: E731
    for method in ("builtin", "data"):
        t = time.time()
        blocks = build_gene_blocks(genes, x01_a, embeddings=method if method == "data" else f"builtin:{species}",
                                   seed=0, log=quiet)
        scores = block_scores(blocks.labels(), corr, go_sets, spec)
        scores["seconds"] = round(time.time() - t, 1)
        scores["n_blocks"], scores["block_size"] = blocks.n_blocks, blocks.block_size
        if method == "builtin":
            scores["placed_by_builtin"] = int((blocks.source == "builtin").sum())
        res["methods"][method] = scores
    rand = [block_scores(build_gene_blocks(genes, x01_a, embeddings="random", seed=s, log=quiet).labels(), corr, go_sets,
                         spec)
            for s in range(RANDOM_SEEDS)]
    res["methods"]["random"] = {k: float(np.mean([r[k] for r in rand])) for k in rand[0]}
    res["methods"]["random"]["sd_over_seeds"] = {k: float(np.std([r[k] for r in rand])) for k in rand[0]}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gene_blocks.json"))
    args = ap.parse_args()
    results = []
    for name, species in DATASETS:
        if not (SHARED / name).exists():
            print(f"skip {name}: not in {SHARED}")
            continue
        r = run_dataset(name, species)
        results.append(r)
        print(f"\n{name} ({species}): {r['matched_to_builtin']}/{r['n_genes']} genes in the built-in table "
              f"{r['matched_by']}, {r['genes_with_go']} with GO terms, {r['seconds']} s")
        print(f"  {'blocks':8s} {'GO Jaccard':>10s} {'spec. GO':>9s} {'co-expr r':>9s}")
        for m, s in r["methods"].items():
            print(f"  {m:8s} {s['go_jaccard']:10.4f} {s['pairs_sharing_specific_go_term']:9.3f} {s['coexpression_r']:9.4f}")
    prov = gene_knowledge.provenance()
    out = {"benchmark": "gene block coherence (benchmarks/bench_gene_blocks.py)", "date": time.strftime("%Y-%m-%d"),
           "n_hvg": N_GENES, "random_seeds": RANDOM_SEEDS,
           "builtin_table": {k: prov.get(k) for k in ("built", "n_genes", "dims", "model")},
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}\n")
    print("| dataset | genes in table | blocks | GO Jaccard | pairs sharing a specific GO term | co-expression r (held-out cells) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for m, s in r["methods"].items():
            print(f"| {r['dataset'].removesuffix('.h5ad')} ({r['species']}) | {r['matched_to_builtin']}/{r['n_genes']} | "
                  f"{m} | {s['go_jaccard']:.4f} | {s['pairs_sharing_specific_go_term']:.3f} | {s['coexpression_r']:.4f} |")


if __name__ == "__main__":
    main()
