"""The examples run (1 epoch each, so they stay quick): a broken example fails the suite."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import shared_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("0*.py")))
def test_example_runs(script, tmp_path):
    args = [sys.executable, str(EXAMPLES / script)]
    if script.startswith("02_"):
        args.append(str(shared_file("kang2018_scgen_valid_pbmc_1975.h5ad")))
    env = {**os.environ, "PYSAVE_EXAMPLE_EPOCHS": "1", "PYSAVE_EXAMPLE_OUT": str(tmp_path), "MPLBACKEND": "Agg"}
    result = subprocess.run(args, cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(tmp_path.rglob("*")), "the example wrote nothing"
