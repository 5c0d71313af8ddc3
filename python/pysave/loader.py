"""Where training cells come from: a matrix in memory, or an h5ad read in chunks from disk.

Both sources hand out contiguous row ranges of [0, 1]-scaled expression; the minibatch
iterator shuffles by chunks (a seeded permutation of chunks, then of the rows of a buffer of
chunks), so a backed file is only ever read in large sequential slices and memory holds one
buffer, whatever the number of cells. When one chunk spans all cells the order is a plain
permutation of the cells, so a backed run with ``chunk_size >= n_cells`` equals the
in-memory run exactly.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from . import data as D

DEFAULT_CHUNK_SIZE = 4096  # rows per sequential read from a backed file
DEFAULT_BUFFER_CHUNKS = 8  # chunks shuffled together (~32k cells)


class InMemorySource:
    """Preprocessed cells held in memory (the default, and every non-backed AnnData)."""

    backed = False

    def __init__(self, x01: sp.csr_matrix, counts: sp.csr_matrix | None, codes: np.ndarray, scaler_index: np.ndarray):
        self.x01, self.counts, self.codes, self.scaler_index = x01, counts, codes, scaler_index

    @property
    def n_cells(self) -> int:
        return self.x01.shape[0]

    def read(self, start: int, stop: int):
        """(x01 CSR, counts CSR or None) for rows start..stop."""
        return self.x01[start:stop], None if self.counts is None else self.counts[start:stop]

    def take(self, rows: np.ndarray) -> "InMemorySource":
        counts = None if self.counts is None else self.counts[rows]
        return InMemorySource(self.x01[rows], counts, self.codes[rows], self.scaler_index[rows])


class BackedSource(InMemorySource):
    """Cells read from a backed (on-disk) AnnData and preprocessed chunk by chunk on the fly.

    Holds only per-cell scalars (library size, condition codes) and the per-gene scalers.
    """

    backed = True

    def __init__(self, X, columns: np.ndarray | None, library: np.ndarray, scalers: D.Scalers,
                 codes: np.ndarray, scaler_index: np.ndarray, keep_counts: bool):
        self.X, self.columns, self.library, self.scalers = X, columns, library, scalers
        self.codes, self.scaler_index, self.keep_counts = codes, scaler_index, keep_counts

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    def read(self, start: int, stop: int):
        block = read_counts(self.X, self.columns, start, stop)
        lognorm = D.log_normalize(block, self.library[start:stop])
        x01 = sp.csr_matrix(D.scale_rows(lognorm, self.scalers.values[self.scaler_index[start:stop]]))
        return x01, (block if self.keep_counts else None)

    def take(self, rows: np.ndarray) -> InMemorySource:
        """The given (sorted) rows, read in one sequential pass and kept in memory."""
        rows = np.asarray(rows, dtype=np.int64)
        xs, cs = [], []
        for start in range(0, self.n_cells, DEFAULT_CHUNK_SIZE):
            stop = min(start + DEFAULT_CHUNK_SIZE, self.n_cells)
            local = rows[(rows >= start) & (rows < stop)] - start
            if len(local):
                x, c = self.read(start, stop)
                xs.append(x[local])
                if c is not None:
                    cs.append(c[local])
        width = len(self.columns) if self.columns is not None else self.X.shape[1]
        x01 = sp.vstack(xs, format="csr") if xs else sp.csr_matrix((0, width), dtype=np.float32)
        counts = (sp.vstack(cs, format="csr") if cs else sp.csr_matrix((0, width), dtype=np.float32)) if self.keep_counts else None
        return InMemorySource(x01, counts, self.codes[rows], self.scaler_index[rows])


def read_counts(X, columns: np.ndarray | None, start: int, stop: int) -> sp.csr_matrix:
    """Raw counts of rows start..stop of a backed matrix, as float32 CSR in the model's genes."""
    block = sp.csr_matrix(X[start:stop], dtype=np.float32)
    return block if columns is None else block[:, columns]


def to_tensors(x01, counts, codes: np.ndarray, device: torch.device):
    x = torch.from_numpy(x01.toarray()).to(device)
    c = torch.from_numpy(np.ascontiguousarray(codes)).to(device)
    k = None if counts is None else torch.from_numpy(counts.toarray().astype(np.float32)).to(device)
    return x, c, k


def contiguous_batches(source, batch_size: int, device: torch.device, start: int = 0, stop: int | None = None) -> Iterator:
    """Rows start..stop in order (encoding, validation)."""
    stop = source.n_cells if stop is None else stop
    for s in range(start, stop, batch_size):
        e = min(s + batch_size, stop)
        x, k = source.read(s, e)
        yield to_tensors(x, k, source.codes[s:e], device)


def shuffled_batches(source, member: np.ndarray, batch_size: int, seed: int, epoch: int, device: torch.device,
                     chunk_size: int | None = None, buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
                     rank: int = 0, world: int = 1) -> Iterator:
    """One epoch of minibatches over the rows where ``member`` is True, shuffled by chunks.

    With ``world`` > 1 each buffer's rows are split evenly over the ranks (a remainder of at
    most world - 1 rows per buffer sits the epoch out), so every rank takes the same number
    of steps, as DDP needs; ``batch_size`` is then the per-rank batch.
    """
    n = source.n_cells
    chunk = n if not chunk_size else int(chunk_size)
    starts = np.arange(0, n, chunk)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(starts))
    pool_x, pool_k, pool_c = None, None, None
    for b in range(0, len(order), buffer_chunks):
        xs, ks, rows = [], [], []
        for ci in np.sort(order[b:b + buffer_chunks]):  # sequential reads in file order
            s, e = int(starts[ci]), int(min(starts[ci] + chunk, n))
            local = np.flatnonzero(member[s:e])
            if not len(local):
                continue
            x, k = source.read(s, e)
            xs.append(x[local])
            ks.append(None if k is None else k[local])
            rows.append(local + s)
        if not xs:
            continue
        sel = rng.permutation(sum(len(r) for r in rows))
        if world > 1:
            sel = sel[: len(sel) // world * world][rank::world]
        x = sp.vstack(xs, format="csr")[sel]
        k = None if ks[0] is None else sp.vstack(ks, format="csr")[sel]
        c = source.codes[np.concatenate(rows)[sel]]
        if pool_x is not None:  # rows left over from the previous buffer go first
            x, c = sp.vstack([pool_x, x], format="csr"), np.concatenate([pool_c, c])
            k = None if k is None else sp.vstack([pool_k, k], format="csr")
        full = x.shape[0] // batch_size * batch_size
        for i in range(0, full, batch_size):
            yield to_tensors(x[i:i + batch_size], None if k is None else k[i:i + batch_size], c[i:i + batch_size], device)
        pool_x, pool_c = x[full:], c[full:]
        pool_k = None if k is None else k[full:]
    if pool_x is not None and pool_x.shape[0]:
        yield to_tensors(pool_x, pool_k, pool_c, device)


def backed_statistics(X, columns: np.ndarray | None, scaler_index: np.ndarray, n_scaler_rows: int,
                      sample_rows: np.ndarray, what: str, log=None):
    """One streaming pass over a backed matrix: count checks, library sizes, max-abs scalers,
    and the raw counts of ``sample_rows`` (for the data-driven gene embedding).

    Returns (library, scalers, sampled x01 CSR) equal to what the in-memory path computes.
    """
    n, n_genes = X.shape[0], (len(columns) if columns is not None else X.shape[1])
    library = np.zeros(n, dtype=np.float64)
    maxima = np.zeros((n_scaler_rows, n_genes), dtype=np.float32)
    sampled = []
    step = max(1, n // 10)
    for start in range(0, n, DEFAULT_CHUNK_SIZE):
        stop = min(start + DEFAULT_CHUNK_SIZE, n)
        block = read_counts(X, columns, start, stop)
        library[start:stop] = D.check_counts(block, what)
        D.update_maxima(maxima, D.log_normalize(block, library[start:stop]), scaler_index[start:stop])
        local = sample_rows[(sample_rows >= start) & (sample_rows < stop)] - start
        if len(local):
            sampled.append((start + local, block[local]))
        if log is not None and (stop // step) != (start // step):
            log(f"streaming statistics: {stop}/{n} cells")
    scalers = D.finish_scalers(maxima)
    if sampled:
        rows = np.concatenate([r for r, _ in sampled])
        raw = sp.vstack([m for _, m in sampled], format="csr")
        x01 = sp.csr_matrix(D.scale_rows(D.log_normalize(raw, library[rows]), scalers.values[scaler_index[rows]]))
    else:
        x01 = sp.csr_matrix((0, n_genes), dtype=np.float32)
    return library, scalers, x01


def backed_library(X, columns: np.ndarray | None, what: str = "adata.X") -> np.ndarray:
    """Library sizes (with the count checks) of a backed matrix, in one streaming pass."""
    library = np.zeros(X.shape[0], dtype=np.float64)
    for start in range(0, X.shape[0], DEFAULT_CHUNK_SIZE):
        stop = min(start + DEFAULT_CHUNK_SIZE, X.shape[0])
        library[start:stop] = D.check_counts(read_counts(X, columns, start, stop), what)
    return library
