"""Built-in gene knowledge: offline language-model embeddings of gene descriptions and GO terms.

The SAVE paper clusters language-model embeddings of NCBI gene descriptions into gene blocks.
pysave ships the offline equivalent (``gene_embeddings/``, built by
``tools/build_gene_embeddings.py``): for every human gene of org.Hs.eg.db, an all-MiniLM-L6-v2
embedding of a text made of its full name, aliases and GO term names, plus the direct GO terms
of each gene (to describe blocks), unambiguous aliases and Ensembl mouse -> human orthologs.

``gene_embeddings="builtin"`` (or ``"builtin:human"``, ``"builtin:mouse"``, ``"builtin:other"``)
selects it in :func:`pysave.blocks.build_gene_blocks`. Genes are matched to the table by

* human: official symbol, then an alias naming exactly one gene, then case-insensitive symbol;
* mouse: Ensembl ortholog (mouse symbol -> human symbol), then case-insensitive symbol;
* other: case-insensitive symbol;

and, for all, a name with dots that matches once dots are read as dashes (R's make.names turns
HLA-DRA into HLA.DRA).

``"builtin"`` picks human or mouse from the gene names (whichever matches more genes exactly).
"""
from __future__ import annotations

import functools
import json
import os
from importlib import resources

import numpy as np
import pandas as pd

from .errors import PySaveError

SPECIES = ("human", "mouse", "other")
TABLE = "human_minilm.npz"
PROVENANCE = "human_minilm.json"


def _path(name: str) -> str:
    path = str(resources.files("pysave.gene_embeddings") / name)
    if not os.path.exists(path):
        raise PySaveError(
            f"the built-in gene table file {name!r} is missing from the pysave installation ({path}); "
            "reinstall pysave, or rebuild it with tools/build_gene_embeddings.py."
        )
    return path


@functools.lru_cache(maxsize=1)
def load_embeddings() -> pd.DataFrame:
    """The built-in table: one row per human gene symbol, columns = embedding dimensions (float32)."""
    with np.load(_path(TABLE), allow_pickle=False) as z:
        return pd.DataFrame(z["embeddings"].astype(np.float32), index=pd.Index(z["genes"].astype(str), name="gene"))


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """Sources, versions, model and build date of the built-in table."""
    with open(_path(PROVENANCE)) as fh:
        return json.load(fh)


def _read_tsv(name: str) -> pd.DataFrame:
    return pd.read_csv(_path(name), sep="\t", dtype=str, keep_default_na=False)


@functools.lru_cache(maxsize=1)
def aliases() -> dict:
    """Alias -> official human symbol, for aliases that name exactly one gene."""
    t = _read_tsv("human_aliases.tsv.gz")
    return dict(zip(t["alias"], t["gene"]))


@functools.lru_cache(maxsize=1)
def mouse_to_human() -> dict:
    """Mouse symbol -> human symbol (Ensembl orthologs: one-to-one first, else the most confident)."""
    t = _read_tsv("mouse_to_human.tsv.gz")
    return dict(zip(t["mouse"], t["human"]))


@functools.lru_cache(maxsize=1)
def go_terms() -> pd.DataFrame:
    """GO id -> ontology (BP/MF/CC) and term name."""
    return _read_tsv("go_terms.tsv.gz").set_index("go_id")


@functools.lru_cache(maxsize=1)
def gene_go() -> dict:
    """Human symbol -> tuple of its direct GO ids."""
    t = _read_tsv("human_go.tsv.gz")
    return {g: tuple(ids.split(";")) for g, ids in zip(t["gene"], t["go_ids"]) if ids}


def parse_spec(spec: str) -> str | None:
    """Species named by a ``"builtin[:species]"`` spec (None = detect); raise on a bad spec."""
    spec = str(spec)
    if spec == "builtin":
        return None
    species = spec.split(":", 1)[1].strip().lower() if spec.startswith("builtin:") else ""
    if species not in SPECIES:
        raise PySaveError(
            f"unknown built-in gene embedding {spec!r}; use 'builtin' (species detected from the gene names), "
            f"or one of {', '.join('builtin:' + s for s in SPECIES)}."
        )
    return species


def detect_species(genes) -> str:
    """'human' or 'mouse': whichever symbol set matches more of ``genes`` exactly."""
    human = set(load_embeddings().index)
    mouse = mouse_to_human()
    n_h = sum(g in human for g in genes)
    n_m = sum(g in mouse for g in genes)
    return "mouse" if n_m > n_h else "human"


def human_symbols(genes, species: str) -> tuple[list[str | None], list[str]]:
    """For each gene, the human symbol of the built-in table it maps to (None if none) and how."""
    table = load_embeddings()
    symbols = set(table.index)
    upper: dict[str, str] = {}
    for s in table.index:
        upper.setdefault(s.upper(), s)
    alias_map = aliases() if species == "human" else {}
    orth = mouse_to_human() if species == "mouse" else {}
    out, how = [], []
    for g in genes:
        g = str(g)
        if species == "human" and g in symbols:
            out.append(g), how.append("symbol")
        elif species == "human" and g in alias_map:
            out.append(alias_map[g]), how.append("alias")
        elif species == "mouse" and g in orth:
            out.append(orth[g]), how.append("ortholog")
        elif g.upper() in upper:
            out.append(upper[g.upper()]), how.append("case-insensitive")
        elif "." in g and g.replace(".", "-").upper() in upper:  # R's make.names: HLA-DRA -> HLA.DRA
            out.append(upper[g.replace(".", "-").upper()]), how.append("dots-as-dashes")
        else:
            out.append(None), how.append("missing")
    return out, how


def builtin_embeddings(genes, spec: str = "builtin", log=print) -> tuple[pd.DataFrame, str]:
    """Built-in vectors for ``genes`` (only those that map), indexed by the caller's gene names.

    Returns the table and the species used, and logs how many genes matched and how.
    """
    species = parse_spec(spec)
    if species is None:
        species = detect_species(genes)
    mapped, how = human_symbols(genes, species)
    table = load_embeddings()
    keep = [i for i, m in enumerate(mapped) if m is not None]
    out = pd.DataFrame(table.loc[[mapped[i] for i in keep]].to_numpy(), index=[str(genes[i]) for i in keep])
    out = out[~out.index.duplicated()]
    counts = pd.Series(how).value_counts()
    detail = ", ".join(f"{counts.get(k, 0)} by {k}" for k in ("symbol", "alias", "ortholog", "case-insensitive", "dots-as-dashes")
                       if counts.get(k, 0))
    missing = [str(g) for g, m in zip(genes, mapped) if m is None]
    log(f"built-in gene embeddings ({species}): {len(keep)} of {len(genes)} genes matched"
        + (f" ({detail})" if detail else "")
        + (f"; not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else ""))
    return out, species


def block_go_terms(gene_names, labels, species: str = "human", top: int = 5) -> pd.DataFrame:
    """Per block: its genes and the GO terms most enriched among them.

    Enrichment is a one-sided hypergeometric test of each direct GO term in the block against all
    annotated genes of the model; terms on at least two block genes are ranked by p-value.
    Returns one row per block: block, n_genes, n_annotated, genes, top_go_terms ("term [BP] k/n,
    p=...", "; "-joined).
    """
    from scipy.stats import hypergeom

    if species not in SPECIES:
        raise PySaveError(f"unknown species {species!r}; use one of {SPECIES}.")
    gene_names = [str(g) for g in gene_names]
    labels = np.asarray(labels)
    mapped, _ = human_symbols(gene_names, species)
    annot = gene_go()
    terms = go_terms()
    sets = [set(annot.get(m, ())) if m else set() for m in mapped]
    annotated = np.array([bool(s) for s in sets])
    n_total = int(annotated.sum())
    background: dict[str, int] = {}
    for s in sets:
        for t in s:
            background[t] = background.get(t, 0) + 1
    rows = []
    for b in np.unique(labels):
        members = np.flatnonzero(labels == b)
        n_block = int(annotated[members].sum())
        counts: dict[str, int] = {}
        for i in members:
            for t in sets[i]:
                counts[t] = counts.get(t, 0) + 1
        scored = []
        for t, k in counts.items():
            if k >= 2 and n_total > 0:
                p = float(hypergeom.sf(k - 1, n_total, background[t], n_block))
                scored.append((p, -k, t))
        scored.sort()
        desc = [f"{terms.term.get(t, t)} [{terms.ontology.get(t, '?')}] {-nk}/{n_block}, p={p:.2g}"
                for p, nk, t in scored[:top]]
        rows.append({"block": int(b), "n_genes": len(members), "n_annotated": n_block,
                     "genes": ",".join(gene_names[i] for i in members), "top_go_terms": "; ".join(desc)})
    return pd.DataFrame(rows)


def describe_blocks(gene_table: pd.DataFrame, method: str = "", species: str | None = None, top: int = 5) -> pd.DataFrame:
    """Readable gene blocks from ``SAVE.gene_blocks()`` (gene, block, position, placed_by).

    ``species`` None: from ``method`` ("builtin:mouse" -> mouse) or else detected from the names.
    Returns one row per block: block, n_genes, placed_by (e.g. "builtin 12, data 2"), n_annotated,
    genes, top_go_terms (see :func:`block_go_terms`).
    """
    for col in ("gene", "block"):
        if col not in gene_table.columns:
            raise PySaveError(f"the gene-block table has no {col!r} column; pass SAVE.gene_blocks().")
    genes = gene_table["gene"].astype(str).tolist()
    if species is None:
        method = str(method)
        species = method.split(":", 1)[1] if method.startswith("builtin:") else detect_species(genes)
    out = block_go_terms(genes, gene_table["block"].to_numpy(), species=species, top=top)
    if "placed_by" in gene_table.columns:
        by = gene_table.groupby("block")["placed_by"].apply(
            lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items()))
        out.insert(2, "placed_by", out["block"].map(by))
    else:
        out.insert(2, "placed_by", "")
    return out
