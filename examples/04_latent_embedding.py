"""Latent embedding of new cells with a saved model: save, load, embed (genes matched by name)."""
import os

import numpy as np

from _common import datasets, out_dir, pysave, trained_pbmc_model

model, _ = trained_pbmc_model()
folder = out_dir("embedding")
model.save(os.path.join(folder, "model"), overwrite=True)

loaded = pysave.SAVE.load(os.path.join(folder, "model"), device="cpu")
new = datasets.pbmc_3tech()[:300]
new = new[:, np.random.default_rng(0).permutation(new.n_vars)].copy()  # another gene order is fine
latent = loaded.get_latent_representation(new)   # also in new.obsm["X_save"]
print("latent:", latent.shape)
new.write_h5ad(os.path.join(folder, "embedded.h5ad"))
