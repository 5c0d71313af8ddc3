"""Block-attention maps per cell type (paper appendix C), with the genes of each block."""
import os

from _common import out_dir, trained_pbmc_model
from pysave.plotting import attention_heatmap

model, adata = trained_pbmc_model()
table = model.attention_by(adata, "cell_type")
folder = out_dir("attention")
table.to_csv(os.path.join(folder, "attention_by_cell_type.tsv"), sep="\t")
attention_heatmap(table, os.path.join(folder, "attention_by_cell_type.png"))
blocks = model.gene_blocks()
blocks.to_csv(os.path.join(folder, "gene_blocks.tsv"), sep="\t", index=False)
top = table.idxmax(axis=1)
for cell_type, block in top.items():
    genes = blocks[blocks["block"] == int(block.split("_")[1])]["gene"].head(8).tolist()
    print(f"{cell_type}: most attended {block} ({', '.join(genes)}, ...)")
