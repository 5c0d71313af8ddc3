"""Gene blocks: balanced optimal-transport clustering of gene embeddings (paper section 3.1).

Genes are grouped into L blocks of K genes (the last block is padded). Each iteration solves
an exact transport problem (POT ``ot.emd``) from genes (mass 1/G each) to blocks (mass in
proportion to their capacity: uniform 1/L when K divides G) on the squared distance to the
centroids, labels every gene by the argmax of the plan and moves each centroid to the mean of
its members, until no label changes. With integer capacities the optimal plan is a vertex of
the transport polytope, so every gene goes whole to one block and the sizes are exact.

Embedding sources: a user file (CSV/TSV/NPZ/parquet, gene -> vector), ``"builtin"`` (the shipped
offline table of language-model embeddings of gene names and GO terms, see gene_knowledge.py),
``"data"`` (a default computed from the training data itself, no network needed) or ``"random"``
(ablation).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import ot
import pandas as pd
import scipy.sparse as sp

from .errors import PySaveError

DEFAULT_N_BLOCKS = 32  # tokens for the encoder; keeps attention cost flat from 200 to 30,000 genes
MIN_BLOCK_SIZE = 8
SOURCES = ("data", "random")


@dataclass
class GeneBlocks:
    """Block membership: ``index[l, k]`` is a gene's column in the model's gene order, -1 = padding."""

    index: np.ndarray  # (L, K) int64
    source: np.ndarray  # (G,) str: which embedding placed each gene ("file", "builtin", "data", "random")
    method: str  # e.g. "data", "random", "builtin:human" or "file:<name>"

    @property
    def n_blocks(self) -> int:
        return int(self.index.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.index.shape[1])

    def labels(self) -> np.ndarray:
        """Block number of every gene, in model gene order."""
        lab = np.empty(len(self.source), dtype=np.int64)
        for b, row in enumerate(self.index):
            lab[row[row >= 0]] = b
        return lab

    def table(self, gene_names) -> pd.DataFrame:
        """One row per gene: its block, its position in the block and the embedding that placed it."""
        rows = []
        for b, row in enumerate(self.index):
            for pos, g in enumerate(row):
                if g >= 0:
                    rows.append((gene_names[g], b, pos, self.source[g]))
        return pd.DataFrame(rows, columns=["gene", "block", "position", "placed_by"])


# ----------------------------------------------------------------------------- sizes
def block_layout(n_genes: int, block_size: int | None = None, n_blocks: int | None = None) -> tuple[int, int]:
    """(L, K) for ``n_genes``: from a block size, a number of blocks, or the default."""
    if block_size is not None and n_blocks is not None:
        raise PySaveError("give either block_size or n_blocks, not both.")
    if block_size is not None:
        if int(block_size) < 1:
            raise PySaveError(f"block_size must be a positive integer, got {block_size}.")
        k = min(int(block_size), n_genes)
    else:
        n = DEFAULT_N_BLOCKS if n_blocks is None else int(n_blocks)
        if n < 1:
            raise PySaveError(f"n_blocks must be a positive integer, got {n_blocks}.")
        k = math.ceil(n_genes / n)
        if n_blocks is None:
            k = max(k, min(MIN_BLOCK_SIZE, n_genes))
    return math.ceil(n_genes / k), k


def _capacities(n_items: int, n_blocks: int, block_size: int) -> np.ndarray:
    caps = np.full(n_blocks, block_size, dtype=np.int64)
    caps[-1] = n_items - block_size * (n_blocks - 1)
    return caps


def _spread(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out


# ----------------------------------------------------------------------------- clustering
def _assign(cost: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    """Exact OT from items (mass 1/n) to clusters (mass capacity/n); label = argmax of the plan."""
    n, k = cost.shape
    scale = cost.max()
    plan = ot.emd(np.full(n, 1.0 / n), capacities / n, cost / scale if scale > 0 else cost,
                  numItermax=max(100_000, 50 * n * k))
    return plan.argmax(axis=1)


def _centroids(emb: np.ndarray, labels: np.ndarray, n_clusters: int, fallback: np.ndarray) -> np.ndarray:
    out = np.array(fallback, dtype=np.float64, copy=True)
    for j in range(n_clusters):
        members = emb[labels == j]
        if len(members):
            out[j] = members.mean(axis=0)
    return out


def balanced_ot_clustering(
    embeddings: np.ndarray,
    capacities: np.ndarray,
    seed: int = 0,
    max_iter: int = 100,
    init_centroids: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Assign every row of ``embeddings`` to a cluster of exactly ``capacities[j]`` members.

    Returns the labels and the number of iterations run.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    n, n_clusters = emb.shape[0], len(capacities)
    if int(capacities.sum()) != n:
        raise ValueError("capacities must add up to the number of items")
    if init_centroids is None:
        centroids = emb[np.random.default_rng(seed).choice(n, size=n_clusters, replace=False)]
    else:
        centroids = np.asarray(init_centroids, dtype=np.float64)
    labels = np.full(n, -1)
    it = 0
    for it in range(1, max_iter + 1):
        new = _assign(ot.dist(emb, centroids), capacities)  # squared Euclidean cost
        if np.array_equal(new, labels):
            break
        labels = new
        centroids = _centroids(emb, labels, n_clusters, centroids)
    return labels, it


def _joint_refinement(file_emb, data_emb, in_file, missing, labels, capacities, max_iter: int = 100):
    """Re-cluster all genes at full block capacities: genes in the file by their file vectors,
    the others by their data-driven vectors, each against its block's centroid in that space."""
    n_blocks = len(capacities)
    cost = np.empty((len(labels), n_blocks))
    for _ in range(max_iter):
        c_file = _centroids(file_emb, labels[in_file], n_blocks, np.repeat(file_emb.mean(0, keepdims=True), n_blocks, 0))
        c_data = _centroids(data_emb, labels, n_blocks, np.repeat(data_emb.mean(0, keepdims=True), n_blocks, 0))
        part_file, part_data = ot.dist(file_emb, c_file), ot.dist(data_emb[missing], c_data)
        # Each space's distances on a [0, 1] scale, so neither dominates the shared plan.
        cost[in_file] = part_file / max(part_file.max(), 1e-12)
        cost[missing] = part_data / max(part_data.max(), 1e-12)
        new = _assign(cost, capacities)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _labels_to_index(labels: np.ndarray, genes_of: np.ndarray, n_blocks: int, block_size: int) -> np.ndarray:
    index = np.full((n_blocks, block_size), -1, dtype=np.int64)
    for b in range(n_blocks):
        members = np.sort(genes_of[labels == b])
        index[b, : len(members)] = members
    return index


# ----------------------------------------------------------------------------- embeddings
EMBEDDING_MAX_CELLS = 20_000


def embedding_sample_rows(n_cells: int, seed: int = 0, max_cells: int = EMBEDDING_MAX_CELLS) -> np.ndarray:
    """The cells the data-driven embedding looks at (all, or a seeded sample of ``max_cells``);
    backed training collects exactly these rows in its streaming pass."""
    if n_cells <= max_cells:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, max_cells, replace=False))


def data_embeddings(X01, n_components: int = 32, seed: int = 0, max_cells: int = EMBEDDING_MAX_CELLS) -> np.ndarray:
    """Gene embeddings from the data itself: co-expression structure via a truncated SVD.

    Genes are columns of the [0, 1]-scaled expression of (up to ``max_cells``) cells, each
    scaled to unit norm; a gene's embedding is its loading on the top singular vectors,
    normalised to unit length, so genes expressed in the same cells lie close together.
    """
    from sklearn.decomposition import TruncatedSVD

    X = sp.csr_matrix(X01, dtype=np.float32)
    if X.shape[0] > max_cells:
        X = X[embedding_sample_rows(X.shape[0], seed, max_cells)]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    Xn = sp.csr_matrix(X @ sp.diags(1.0 / norms))
    k = max(1, min(n_components, min(Xn.shape) - 1))
    if min(Xn.shape) <= 2:
        emb = Xn.T.toarray()
    else:
        svd = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed)
        svd.fit(Xn)
        emb = svd.components_.T * svd.singular_values_
    lengths = np.linalg.norm(emb, axis=1, keepdims=True)
    lengths[lengths == 0] = 1.0
    return emb / lengths


def read_embedding_file(path: str) -> pd.DataFrame:
    """Read gene embeddings: rows are genes (index = gene name), columns are dimensions.

    CSV/TSV/TXT: first column = gene name, other columns numbers (a header row is optional).
    NPZ: arrays ``genes`` (names) and ``embeddings`` (genes x dims). Parquet: gene names in the
    index or a ``gene`` column.
    """
    if not os.path.exists(path):
        raise PySaveError(f"gene-embedding file {path!r} does not exist; give the path to a CSV/TSV/NPZ/parquet file.")
    lower = path.lower()
    try:
        if lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if "genes" not in z or "embeddings" not in z:
                    raise PySaveError(
                        f"{path!r} must hold two arrays, 'genes' and 'embeddings'; it has {list(z.keys())}."
                    )
                df = pd.DataFrame(np.asarray(z["embeddings"]), index=np.asarray(z["genes"]).astype(str))
        elif lower.endswith(".parquet") or lower.endswith(".pq"):
            df = pd.read_parquet(path)
            if "gene" in df.columns:
                df = df.set_index("gene")
        elif lower.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")):
            sep = "," if ".csv" in lower else "\t"
            df = pd.read_csv(path, sep=sep, index_col=0, header=None)
            try:  # a header row: its first data cell is not a number
                float(df.iloc[0, 0])
            except (TypeError, ValueError):
                df.columns = df.iloc[0]
                df = df.iloc[1:]
        else:
            raise PySaveError(f"unknown gene-embedding file type {path!r}; use .csv, .tsv, .npz or .parquet.")
    except PySaveError:
        raise
    except pd.errors.ParserError as err:
        raise PySaveError(f"gene-embedding file {path!r} has rows of different lengths ({err}); every gene needs a vector "
                          "of the same dimension.") from err
    except ImportError as err:
        raise PySaveError(f"reading {path!r} needs an optional package ({err}); install it, e.g. pip install pyarrow.") from err
    except Exception as err:  # noqa: BLE001 - any parser failure is a bad file for the user
        raise PySaveError(f"could not read gene embeddings from {path!r}: {err}") from err
    try:
        df = df.apply(pd.to_numeric)
    except (TypeError, ValueError) as err:
        raise PySaveError(f"gene-embedding file {path!r} has non-numeric values ({err}); every column but the gene name must be a number.") from err
    df.index = df.index.astype(str)
    if df.shape[1] < 1 or df.shape[0] < 1:
        raise PySaveError(f"gene-embedding file {path!r} holds no vectors.")
    if not np.isfinite(df.to_numpy(dtype=np.float64)).all():
        raise PySaveError(f"gene-embedding file {path!r} contains NaN or infinite values; fix or drop those genes.")
    if not df.index.is_unique:
        dup = df.index[df.index.duplicated()].unique()[:5].tolist()
        raise PySaveError(f"gene-embedding file {path!r} lists genes more than once (e.g. {dup}); keep one row per gene.")
    return df


def _match_genes(genes: list[str], table: pd.DataFrame) -> np.ndarray:
    """Row of ``table`` for each gene: exact name first, then case-insensitive; -1 if absent."""
    exact = table.index.get_indexer(genes)
    upper = pd.Index(table.index.str.upper())
    first_upper = pd.Series(np.arange(len(upper)), index=upper)
    first_upper = first_upper[~first_upper.index.duplicated()]
    rows = exact.copy()
    for i, g in enumerate(genes):
        if rows[i] < 0:
            rows[i] = first_upper.get(g.upper(), -1)
    return rows


# ----------------------------------------------------------------------------- entry point
def build_gene_blocks(
    genes: list[str],
    X01,
    embeddings: str = "data",
    block_size: int | None = None,
    n_blocks: int | None = None,
    seed: int = 0,
    log=print,
) -> GeneBlocks:
    """Group ``genes`` into balanced blocks using ``embeddings`` ("data", "random", "builtin[:species]" or a file)."""
    n_genes = len(genes)
    L, K = block_layout(n_genes, block_size, n_blocks)
    caps = _capacities(n_genes, L, K)
    all_genes = np.arange(n_genes)
    if embeddings == "random":
        labels = np.repeat(np.arange(L), caps)[np.random.default_rng(seed).permutation(n_genes)]
        return GeneBlocks(_labels_to_index(labels, all_genes, L, K), np.full(n_genes, "random"), "random")
    data_emb = data_embeddings(X01, seed=seed)
    if embeddings == "data":
        labels, iters = balanced_ot_clustering(data_emb, caps, seed=seed)
        log(f"gene blocks: {L} blocks of {K} genes from data-driven embeddings ({iters} OT iterations)")
        return GeneBlocks(_labels_to_index(labels, all_genes, L, K), np.full(n_genes, "data"), "data")

    if str(embeddings).startswith("builtin"):  # shipped offline gene-knowledge table (gene_knowledge.py)
        from .gene_knowledge import builtin_embeddings

        table, species = builtin_embeddings(genes, str(embeddings), log=log)
        label, name = "builtin", f"builtin ({species})"
    else:
        table = read_embedding_file(str(embeddings))
        label, name = "file", os.path.basename(str(embeddings))
    rows = _match_genes(genes, table)
    in_file = np.flatnonzero(rows >= 0)
    missing = np.flatnonzero(rows < 0)
    if len(in_file) == 0:
        raise PySaveError(
            f"none of the {n_genes} genes is in the gene-embedding file {embeddings!r} (its first names: "
            f"{table.index[:3].tolist()}); check that it uses the same gene identifiers as adata.var_names."
        )
    if len(in_file) < L:
        raise PySaveError(
            f"only {len(in_file)} genes are in the gene-embedding file, fewer than the {L} blocks; "
            "use a file that covers more genes, fewer blocks, or embeddings='data'."
        )
    # File genes fill each block in proportion to its capacity; the rest is left for missing genes.
    file_caps = _spread(len(in_file), caps.astype(float))
    file_emb = table.to_numpy(dtype=np.float64)[rows[in_file]]
    file_labels, iters = balanced_ot_clustering(file_emb, file_caps, seed=seed)
    labels = np.empty(n_genes, dtype=np.int64)
    labels[in_file] = file_labels
    source = np.full(n_genes, label, dtype=object)
    if len(missing):
        # Place the missing genes by the data-driven embedding, next to the file genes of each block.
        centroids = np.stack([data_emb[in_file[file_labels == b]].mean(axis=0) for b in range(L)])
        rest_labels, _ = balanced_ot_clustering(
            data_emb[missing], caps - file_caps, seed=seed, max_iter=1, init_centroids=centroids
        )
        labels[missing] = rest_labels
        labels = _joint_refinement(file_emb, data_emb, in_file, missing, labels, caps)
        source[missing] = "data"
        log(
            f"gene blocks: {len(missing)} of {n_genes} genes are not in {name}; "
            "placed them by the data-driven embedding"
        )
    log(f"gene blocks: {L} blocks of {K} genes from {name} ({iters} OT iterations)")
    method = f"builtin:{species}" if label == "builtin" else f"file:{name}"
    return GeneBlocks(_labels_to_index(labels, all_genes, L, K), source.astype(str), method)
