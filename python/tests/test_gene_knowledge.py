"""The shipped gene-knowledge table (gene_embeddings="builtin") and `pysave blocks`.

Uses only the committed files in pysave/gene_embeddings: no R packages, no embedding model.
"""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import pysave
from pysave import gene_knowledge as gk
from pysave.blocks import build_gene_blocks
from pysave.cli import main
from pysave.errors import PySaveError

from support import TINY


def _x01(adata):
    x = np.log1p(adata.X.toarray() / adata.X.toarray().sum(1, keepdims=True) * 1e4)
    return x / np.maximum(x.max(0), 1e-12)


def test_table_loads_with_dims_and_provenance():
    table = gk.load_embeddings()
    prov = gk.provenance()
    assert table.shape == (prov["n_genes"], prov["dims"])
    assert table.shape[0] > 60_000 and table.shape[1] == 64
    assert table.index.is_unique and table.dtypes.eq(np.float32).all()
    norms = np.linalg.norm(table.to_numpy(), axis=1)
    assert np.allclose(norms, 1.0, atol=0.01)
    assert "all-MiniLM-L6-v2" in prov["model"]["name"]
    assert {"org.Hs.eg.db", "GO.db", "mouse_orthologs"} <= set(prov["sources"])
    assert prov["built"] and prov["sources"]["org.Hs.eg.db"]["EGSOURCEDATE"]


def test_well_known_genes_and_semantics():
    table = gk.load_embeddings()
    for g in ("CD3E", "CD3D", "MS4A1", "CD79A", "INS", "GCG", "LYZ", "CD14", "MALAT1"):
        assert g in table.index, g
    cos = lambda a, b: float(table.loc[a] @ table.loc[b])  # noqa: E731 - unit vectors
    assert cos("CD3E", "CD3D") > cos("CD3E", "INS")
    assert cos("MS4A1", "CD79A") > cos("MS4A1", "GCG")
    go = gk.gene_go()
    terms = gk.go_terms()
    assert any("T cell receptor" in terms.term[t] for t in go["CD3E"])


def test_builtin_blocks_place_real_genes_and_fall_back_to_data(pbmc_small):
    genes = list(pbmc_small.var_names)
    x01 = _x01(pbmc_small)
    messages = []
    blocks = build_gene_blocks(genes, x01, embeddings="builtin", n_blocks=8, log=messages.append)
    assert blocks.method == "builtin:human"
    assert (blocks.source == "builtin").mean() > 0.9
    assert sorted(blocks.index[blocks.index >= 0].tolist()) == list(range(len(genes)))
    # Genes the table does not know are placed by the data-driven embedding, and reported.
    renamed = [f"NOTAGENE{i}" if i % 25 == 0 else g for i, g in enumerate(genes)]
    messages.clear()
    blocks = build_gene_blocks(renamed, x01, embeddings="builtin:human", n_blocks=8, log=messages.append)
    fake = np.array([g.startswith("NOTAGENE") for g in renamed])
    assert (blocks.source[fake] == "data").all() and (blocks.source[~fake] != "data").mean() > 0.9
    n_missing = int((blocks.source == "data").sum())
    assert n_missing >= fake.sum()
    assert any(f"{n_missing} of {len(genes)} genes are not in builtin (human)" in m for m in messages), messages
    assert any(f"{len(genes) - n_missing} of {len(genes)} genes matched" in m and "NOTAGENE0" in m for m in messages)


def test_aliases_mouse_orthologs_and_species():
    mapped, how = gk.human_symbols(["CD3E", "CD45", "cd3e", "NOTAGENE"], "human")
    assert mapped == ["CD3E", "PTPRC", "CD3E", None]
    assert how == ["symbol", "alias", "case-insensitive", "missing"]
    assert gk.human_symbols(["HLA.DRA"], "human") == (["HLA-DRA"], ["dots-as-dashes"])
    mapped, how = gk.human_symbols(["Cd3e", "Gcg", "Ms4a1", "Nope1"], "mouse")
    assert mapped[:3] == ["CD3E", "GCG", "MS4A1"] and mapped[3] is None and how[0] == "ortholog"
    assert gk.human_symbols(["Ins2"], "mouse")[0] == ["INS"]
    assert gk.detect_species(["Cd3e", "Gcg", "Ins1", "Actb"]) == "mouse"
    assert gk.detect_species(["CD3E", "GCG", "INS", "ACTB"]) == "human"
    table, species = gk.builtin_embeddings(["Cd3e", "Gcg", "Nope1"], "builtin", log=lambda *_: None)
    assert species == "mouse" and list(table.index) == ["Cd3e", "Gcg"]
    with pytest.raises(PySaveError, match="builtin:mouse"):
        gk.parse_spec("builtin:fish")


def test_block_go_terms_describe_blocks():
    genes = ["CD3E", "CD3D", "CD3G", "CD247", "MS4A1", "CD79A", "CD79B", "CD19"]
    out = gk.block_go_terms(genes, [0, 0, 0, 0, 1, 1, 1, 1], top=5)
    assert list(out.block) == [0, 1] and list(out.n_genes) == [4, 4]
    assert "T cell" in out.top_go_terms[0] and "B cell" in out.top_go_terms[1]


def test_save_with_builtin_embeddings(pbmc_small):
    pysave.SAVE.setup_anndata(pbmc_small, condition_keys=["batch", "cell_type"], batch_key="batch")
    model = pysave.SAVE(pbmc_small, gene_embeddings="builtin", verbose=False, **TINY)
    table = model.gene_blocks()
    assert model.blocks.method == "builtin:human"
    assert (table.placed_by == "builtin").mean() > 0.9


def test_blocks_command(trained, tmp_path):
    r = CliRunner().invoke(main, ["blocks", trained["dir"]], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "block 0 (" in r.output and "GO:" in r.output
    out = tmp_path / "blocks.tsv"
    r = CliRunner().invoke(main, ["blocks", trained["dir"], "--out", str(out), "--top", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out, sep="\t")
    n_blocks = trained["model"].blocks.n_blocks
    assert list(table.columns) == ["block", "n_genes", "placed_by", "n_annotated", "genes", "top_go_terms"]
    assert len(table) == n_blocks and table.n_genes.sum() == len(trained["model"].genes)
    assert table.top_go_terms.fillna("").str.contains(r"\[(?:BP|MF|CC)\]").sum() >= n_blocks // 2
    r = CliRunner().invoke(main, ["blocks", trained["dir"], "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output
