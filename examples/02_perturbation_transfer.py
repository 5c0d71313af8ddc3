"""Perturbation prediction (control -> IFN-beta stimulated) for a held-out cell type, Kang 2018.

Usage: python 02_perturbation_transfer.py [KANG.h5ad]   (default: ../shared/data's scGen file)
"""
import os
import sys

import numpy as np
import scanpy as sc

from _common import EPOCHS, FAST, out_dir, pysave
from pysave.io import read_h5ad

here = os.path.dirname(os.path.abspath(__file__))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared", "data", "kang2018_scgen_valid_pbmc_1975.h5ad")
if not os.path.exists(path):
    sys.exit(f"no Kang data at {path}; pass the path of an h5ad with obs 'condition' and 'cell_type' and raw counts")
adata = read_h5ad(path)
held_type = "CD14+Mono"
held = ((adata.obs["cell_type"] == held_type) & (adata.obs["condition"] == "stimulated")).to_numpy()
train = adata[~held].copy()
pysave.SAVE.setup_anndata(train, condition_keys=["condition", "cell_type"])
model = pysave.SAVE(train, **FAST)
model.train(max_epochs=EPOCHS, flow_epochs=None if EPOCHS >= 20 else EPOCHS, lr=1e-3)

control = adata[((adata.obs["cell_type"] == held_type) & (adata.obs["condition"] == "control")).to_numpy()].copy()
predicted = model.transfer(control, {"condition": "stimulated"}, via="flow")    # through the flow
# The default (via="auto" takes the shift here): the latent shifts of the 30 training cells of other
# types each cell resembles most (shift_neighbours)
shifted = model.transfer(control, {"condition": "stimulated"})
print("transfer's default went", shifted.uns["pysave"]["via"])
# the control cells' own expression plus the decoded change: the VAE's reconstruction error cancels
plus = model.transfer(control, {"condition": "stimulated"}, via="shift", output="input_plus_change")

real = adata[held].copy()
sc.pp.normalize_total(real, target_sum=1e4)
sc.pp.log1p(real)
real_mean = np.asarray(real[:, model.genes].X.mean(0)).ravel()
for name, pred in (("flow", predicted), ("shift", shifted), ("shift, input + change", plus)):
    r = np.corrcoef(real_mean, pred.X.mean(0))[0, 1]
    print(f"{held_type}, via {name}: predicted vs real stimulated per-gene means, r^2 = {r ** 2:.3f}")
predicted.write_h5ad(os.path.join(out_dir("perturbation"), f"{held_type}_predicted_stimulated.h5ad"))
