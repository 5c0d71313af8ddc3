"""Crash safety: kill `pysave train` mid-way (twice: in the VAE and in the flow stage), resume,
and get exactly the model of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ARGS = ["--condition", "batch", "--condition", "cell_type", "--batch-key", "batch", "--epochs", "50",
        "--flow-epochs", "50", "--batch-size", "128", "--hidden-size", "16", "--condition-dim", "16",
        "--latent-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1", "--heads", "2",
        "--flow-hidden-size", "16", "--flow-layers", "1", "--flow-token-size", "8", "--flow-heads", "2", "--flow-condition-dim", "16",
        "--n-blocks", "4", "--checkpoint-every", "1", "--quiet"]


def _train(data, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pysave", "train", data, "--out", out, *ARGS, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stage(checkpoint):
    try:
        with open(os.path.join(checkpoint, "state.json")) as fh:
            state = json.load(fh)["state"]
    except (OSError, ValueError, KeyError):
        return None, 0
    stage = state["__dict__"] if "__dict__" in state else state
    items = dict((k, v) for k, v in stage)
    fit = dict((k, v) for k, v in items["fit"]["__dict__"])
    return items["stage"], fit["epoch"]


def _kill_when(proc, checkpoint, stage, min_epoch, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        got, epoch = _stage(checkpoint)
        if got == stage and epoch >= min_epoch:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return epoch
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def test_kill_and_resume_gives_the_uninterrupted_model(trained, tmp_path):
    data = trained["data"]
    full = _train(data, str(tmp_path / "full"))
    assert full.wait() == 0, full.stderr.read()

    out = str(tmp_path / "interrupted")
    checkpoint = out + ".checkpoint"
    _kill_when(_train(data, out), checkpoint, "vae", 3)
    assert not os.path.exists(out)  # nothing half-written under the final name
    resumed = _train(data, out, "--resume")
    _kill_when(resumed, checkpoint, "flow", 3)
    final = _train(data, out, "--resume")
    assert final.wait() == 0, final.stderr.read()
    assert not os.path.exists(checkpoint)  # cleaned up after the model was saved

    a = load_file(str(tmp_path / "full" / "weights.safetensors"))
    b = load_file(os.path.join(out, "weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_resume_refuses_a_different_run(trained, tmp_path):
    out = str(tmp_path / "m")
    proc = _train(trained["data"], out)
    _kill_when(proc, out + ".checkpoint", "vae", 2)
    other = subprocess.run([sys.executable, "-m", "pysave", "train", trained["data"], "--out", out, *ARGS, "--seed", "5", "--resume"],
                           capture_output=True, text=True)
    assert other.returncode == 1 and "different run" in other.stderr
    assert "params.seed: checkpoint 0, now 5" in other.stderr  # names what differs
    missing = subprocess.run([sys.executable, "-m", "pysave", "train", trained["data"], "--out", str(tmp_path / "none"), *ARGS, "--resume"],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no training checkpoint" in missing.stderr


# Parameters added after checkpoints were first written: (name, the value every run had before it
# existed, another value: today's default where that differs). A checkpoint lacking the key resumes
# only at the old value.
PARAMS_ADDED_LATER = [("mask_all_prob", 0.0, 0.1), ("gelu_approximate", "tanh", "none"), ("feed_forward_size", None, 128)]


def test_every_parameter_added_later_is_covered_below():
    from pysave.model import PARAMS_BEFORE_THEY_EXISTED

    assert {key: before for key, before, _ in PARAMS_ADDED_LATER} == PARAMS_BEFORE_THEY_EXISTED


@pytest.mark.parametrize("key,before,other", PARAMS_ADDED_LATER)
def test_checkpoints_from_before_a_parameter_existed_match_only_its_old_value(key, before, other):
    from pysave.model import DEFAULTS, fingerprint_differences, fingerprint_params

    older = {k: v for k, v in DEFAULTS.items() if k != key}
    saved = fingerprint_params(older)  # as a checkpoint of then holds them
    assert fingerprint_params({**older, key: before}) == saved  # resumes with the old value given
    now = {**older, key: other}
    assert fingerprint_params(now) == {**saved, key: other}  # at any other value it is part of the match
    assert fingerprint_differences({"params": saved, "seed": 0}, {"params": fingerprint_params(now), "seed": 0}) == [
        f"params.{key}: checkpoint absent, now {other}"]
