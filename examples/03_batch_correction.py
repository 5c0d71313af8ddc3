"""Batch correction: a batch-free latent (obsm) and corrected expression (layers), plus a UMAP."""
import os

import scanpy as sc

from _common import out_dir, trained_pbmc_model

model, adata = trained_pbmc_model()
model.get_latent_representation(adata)           # -> adata.obsm["X_save"]
model.correct(adata)                             # -> adata.layers["save_corrected"] (batch masked; log1p(CP10k) like X)
model.correct(adata, reference="10x_3prime_v2", layer_added="as_3prime_v2")
model.correct(adata, reference="all", layer_added="mean_over_batches")  # decoded under each batch, averaged

sc.pp.neighbors(adata, use_rep="X_save")
sc.tl.umap(adata)
folder = out_dir("batch_correction")
fig = sc.pl.umap(adata, color=["batch", "cell_type"], return_fig=True, show=False)
fig.savefig(os.path.join(folder, "umap_latent.png"), dpi=100, bbox_inches="tight")
adata.write_h5ad(os.path.join(folder, "corrected.h5ad"))
print("wrote", folder)
