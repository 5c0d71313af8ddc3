"""Shared set-up for the examples: the bundled PBMC data and a quick CPU configuration.

Set PYSAVE_EXAMPLE_EPOCHS to train longer (default 60) or shorter (the test suite uses 1).
"""
import os

import pysave
from pysave import datasets

EPOCHS = int(os.environ.get("PYSAVE_EXAMPLE_EPOCHS", "60"))
# A smaller network than the paper's, about 7x faster on a CPU (see README, "Speed").
FAST = dict(n_blocks=16, hidden_size=128, condition_dim=256, n_encoder_layers=2, n_decoder_layers=2)


def trained_pbmc_model(**params):
    adata = datasets.pbmc_3tech()
    pysave.SAVE.setup_anndata(adata, condition_keys=["batch", "cell_type"], batch_key="batch")
    model = pysave.SAVE(adata, **{**FAST, **params})
    model.train(max_epochs=EPOCHS, flow_epochs=None if EPOCHS >= 20 else EPOCHS, lr=1e-3)
    return model, adata


def out_dir(name):
    path = os.path.join(os.environ.get("PYSAVE_EXAMPLE_OUT", "example_output"), name)
    os.makedirs(path, exist_ok=True)
    return path
