"""Helpers shared by the test modules (imported as `support`: a module named `conftest` would
clash with shared-tests/conftest.py when both folders run in one pytest session)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# A network small enough to train in seconds on 2 CPU cores; the shapes are the paper's kinds.
TINY = dict(hidden_size=32, condition_dim=32, latent_dim=32, latent_token_size=8, n_encoder_layers=1,
            n_decoder_layers=1, n_heads=2, flow_hidden_size=32, flow_layers=1, flow_token_size=16,
            flow_heads=2, flow_condition_dim=32, n_blocks=8)
TINY_TRAIN = dict(max_epochs=15, flow_epochs=30, batch_size=128, lr=3e-3, flow_lr=3e-3, progress=False)

SHARED_DATA = Path(os.environ.get("PYSAVE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def shared_file(name: str) -> Path:
    """A dataset from ../shared/data. CI sets PYSAVE_REQUIRE_SHARED=1, so there it must exist."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("PYSAVE_REQUIRE_SHARED"):
            pytest.fail(f"{path} is missing but PYSAVE_REQUIRE_SHARED is set")
        pytest.skip(f"{path} not available (needs ../shared/data beside the checkout)")
    return path
