import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pysave.blocks import balanced_ot_clustering, block_layout, build_gene_blocks, read_embedding_file
from pysave.errors import PySaveError


@pytest.mark.parametrize("n_genes, kwargs, expected", [
    (200, {}, (25, 8)),  # default: 32 blocks, but at least 8 genes per block
    (2000, {}, (32, 63)),
    (30000, {}, (32, 938)),
    (1000, {"block_size": 40}, (25, 40)),
    (1001, {"block_size": 40}, (26, 40)),
    (1000, {"n_blocks": 5}, (5, 200)),
])
def test_block_layout(n_genes, kwargs, expected):
    assert block_layout(n_genes, **kwargs) == expected


def test_block_layout_rejects_both():
    with pytest.raises(PySaveError, match="either block_size or n_blocks"):
        block_layout(100, block_size=10, n_blocks=10)


def test_balanced_clustering_is_exact_balanced_and_recovers_planted_groups():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 10)) * 10
    truth = np.repeat(np.arange(4), 25)
    emb = centers[truth] + rng.normal(size=(100, 10))
    labels, iters = balanced_ot_clustering(emb, np.full(4, 25), seed=3)
    assert np.bincount(labels).tolist() == [25, 25, 25, 25]
    # every planted group lands in exactly one block
    for g in range(4):
        assert len(set(labels[truth == g])) == 1
    again, _ = balanced_ot_clustering(emb, np.full(4, 25), seed=3)
    assert np.array_equal(labels, again)
    assert iters >= 1


def test_unequal_capacities_are_met_exactly():
    emb = np.random.default_rng(0).normal(size=(53, 5))
    labels, _ = balanced_ot_clustering(emb, np.array([20, 20, 13]), seed=0)
    assert np.bincount(labels).tolist() == [20, 20, 13]


def _toy_data(n_cells=300, n_genes=60, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.random((n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.3))


def test_data_driven_blocks_cover_every_gene_once():
    genes = [f"g{i}" for i in range(60)]
    blocks = build_gene_blocks(genes, _toy_data(), "data", block_size=8, log=lambda m: None)
    assert blocks.index.shape == (8, 8)
    members = blocks.index[blocks.index >= 0]
    assert sorted(members.tolist()) == list(range(60))
    assert (blocks.index < 0).sum() == 4  # last block padded
    table = blocks.table(genes)
    assert list(table.columns) == ["gene", "block", "position", "placed_by"]
    assert set(table["placed_by"]) == {"data"}
    again = build_gene_blocks(genes, _toy_data(), "data", block_size=8, log=lambda m: None)
    assert np.array_equal(blocks.index, again.index)


def test_random_blocks_depend_on_seed():
    genes = [f"g{i}" for i in range(60)]
    a = build_gene_blocks(genes, _toy_data(), "random", block_size=10, seed=1)
    b = build_gene_blocks(genes, _toy_data(), "random", block_size=10, seed=2)
    assert not np.array_equal(a.index, b.index)
    assert sorted(a.index.ravel().tolist()) == list(range(60))


@pytest.mark.parametrize("ext", ["csv", "tsv", "npz", "tsv-noheader"])
def test_file_embeddings_with_missing_genes(tmp_path, ext):
    genes = [f"g{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    # genes 0-29 in group A, 30-49 in group B; genes 50-59 absent from the file
    vecs = np.vstack([np.tile([10.0, 0, 0], (30, 1)), np.tile([0, 10.0, 0], (20, 1))]) + rng.normal(size=(50, 3)) * 0.1
    names = [g.upper() if i % 7 == 0 else g for i, g in enumerate(genes[:50])]  # case differs for some
    path = tmp_path / f"emb.{ext.split('-')[0]}"
    if ext == "npz":
        np.savez(path, genes=np.array(names), embeddings=vecs)
    else:
        frame = pd.DataFrame(vecs, index=names)
        frame.to_csv(path, sep="," if ext == "csv" else "\t", header=ext != "tsv-noheader")
    logs = []
    blocks = build_gene_blocks(genes, _toy_data(), str(path), n_blocks=2, log=logs.append)
    labels = blocks.labels()
    assert len(set(labels[:30])) == 1 and len(set(labels[30:50])) == 1 and labels[0] != labels[30]
    assert (blocks.source[50:] == "data").all() and (blocks.source[:50] == "file").all()
    assert np.bincount(labels).tolist() == [30, 30]
    assert any("10 of 60 genes are not in" in m for m in logs)


def test_bad_embedding_files(tmp_path):
    with pytest.raises(PySaveError, match="does not exist"):
        read_embedding_file(str(tmp_path / "nope.csv"))
    bad = tmp_path / "nan.csv"
    bad.write_text("gene,a,b\ng1,1,nan\ng2,1,2\n")
    with pytest.raises(PySaveError, match="NaN"):
        read_embedding_file(str(bad))
    dup = tmp_path / "dup.csv"
    dup.write_text("g1,1,2\ng1,1,2\n")
    with pytest.raises(PySaveError, match="more than once"):
        read_embedding_file(str(dup))
    other = tmp_path / "other.csv"
    other.write_text("x1,1,2\nx2,3,4\n")
    with pytest.raises(PySaveError, match="none of the 60 genes"):
        build_gene_blocks([f"g{i}" for i in range(60)], _toy_data(), str(other), n_blocks=2)
    with pytest.raises(PySaveError, match="unknown gene-embedding file type"):
        (tmp_path / "x.json").write_text("{}")
        read_embedding_file(str(tmp_path / "x.json"))
