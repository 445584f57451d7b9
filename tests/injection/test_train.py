"""The trainer: accumulation keeps the global batch, resume after a kill is exact, and two
gloo processes match one process on the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from injection.training.train import fit
from tests.injection.fit_script import STEPS, config, features

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def losses(history):
    return np.array([r["loss"] for r in history])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return fit(features(), config(out), out)["history"]


def test_loss_falls_and_is_logged(uninterrupted, tmp_path):
    curve = losses(uninterrupted)
    assert curve[-5:].mean() < 0.7 * curve[:5].mean()
    assert {"description_loss", "label_loss", "lr", "logit_scale"} <= set(uninterrupted[0])
    assert uninterrupted[0]["logit_scale"] == pytest.approx(1 / 0.07, rel=0.05)


def test_accumulation_keeps_the_whole_batch_as_negatives(uninterrupted, tmp_path):
    accumulated = fit(features(), config(tmp_path, accumulate=4), tmp_path)["history"]
    np.testing.assert_allclose(losses(accumulated), losses(uninterrupted), atol=1e-5)


@pytest.mark.slow  # a kill loop: two processes of their own (7 s)
def test_kill_then_resume_matches_the_uninterrupted_run(uninterrupted, tmp_path):
    cmd = [sys.executable, "-m", "tests.injection.fit_script", str(tmp_path), "--sleep", "0.1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    last = tmp_path / "checkpoints" / "last"
    deadline = time.time() + 120
    while time.time() < deadline and not (last.is_file() and last.read_text() >= "step-000010"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped = int(last.read_text().split("-")[1])
    assert 10 <= stopped < STEPS, "the kill should land mid-run"
    subprocess.run(cmd[:-2] + ["--resume"], cwd=ROOT, check=True, timeout=300)
    resumed = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(losses(resumed), losses(uninterrupted), atol=1e-5)


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def alone_then_two_ranks(args: list[str], one, two) -> subprocess.CompletedProcess:
    """`python ARGS --out ONE` in one process, then under `torchrun --nproc-per-node 2` with
    `--out TWO` (gloo on this CPU); returns the two-rank launch, which must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(one)], cwd=ROOT, env=env,
                   check=True, timeout=300, capture_output=True)
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                             "2", "--master-port", _free_port(), *args, "--out", str(two)],
                            cwd=ROOT, env=env, timeout=300, capture_output=True, text=True)
    assert launch.returncode == 0, launch.stderr[-3000:]
    return launch


@pytest.fixture(scope="module")
def cli_corpus(tmp_path_factory, clips):
    from tests.builders.synthetic_runs import write_synthetic_run
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    root = tmp_path_factory.mktemp("ddp")
    media = [str(clips[n]) for n in ("real_astronaut", "real_grace_hopper", "tone_220",
                                     "tone_440")]
    return (write_synthetic_run(root / "run", 20, media=media, planted=False),
            build_tiny_va_encoder(root / "va"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["heads", "blocks"])
def test_torchrun_two_gloo_ranks_through_the_cli_match_one_process(mode, cli_corpus,
                                                                   tmp_path):
    """`torchrun --nproc-per-node 2 -m injection.cli train` (each rank its half of the
    global batch, negatives gathered from both) gives one process's losses; the ranks also
    split the feature extraction between them."""
    run, encoder = cli_corpus
    args = ["-m", "injection.cli", "train", "--descriptions", str(run), "--encoder",
            str(encoder), "--steps", "6", "--batch-size", "8", "--mode", mode,
            "--workers", "1", "--encoder-lr", "1e-2", "--eval-fraction", "0.2"]
    one, two = tmp_path / "one", tmp_path / "two"
    alone_then_two_ranks(args, one, two)
    curves = [[json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
              for out in (one, two)]
    assert [r["step"] for r in curves[1]] == list(range(1, 7))
    np.testing.assert_allclose(losses(curves[1]), losses(curves[0]), atol=1e-5)
    indexes = sorted(p.name for p in (two / "cache" / "va").glob("index*.parquet"))
    assert indexes == ["index-rank1.parquet", "index.parquet"]  # both ranks extracted
    assert (two / "encoder" / "injection.json").is_file()  # rank 0 exported


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["tiny", "measured"])
def test_torchrun_ranks_share_the_features_of_a_manifest(encoder, cli_corpus, clips, tmp_path):
    """`torchrun --nproc-per-node 2 -m injection.cli features`: each rank computes its share
    of the clips (both write cache indexes), rank 0 writes the file, equal to one process's."""
    import pyarrow.parquet as pq

    names = ["real_astronaut", "real_grace_hopper", "tone_220", "tone_440", "silent_video",
             "corrupt"]
    (tmp_path / "m.csv").write_text("path,clip_id\n" + "".join(
        f"{clips[n]},{n}\n" for n in names))
    args = ["-m", "injection.cli", "features", "--manifest", str(tmp_path / "m.csv"),
            "--workers", "0", *(["--encoder", str(cli_corpus[1])] if encoder == "tiny" else [])]
    one, two = tmp_path / "one" / "f.parquet", tmp_path / "two" / "f.parquet"
    launch = alone_then_two_ranks(args, one, two)
    assert launch.stderr.count("wrote ") == 1, launch.stderr  # rank 0 alone writes and says so
    indexes = sorted(p.name for p in (tmp_path / "two").rglob("index*.parquet"))
    assert indexes == ["index-rank1.parquet", "index.parquet"]  # both ranks computed
    alone, shared = pq.read_table(one), pq.read_table(two)
    assert shared["clip_id"].to_pylist() == alone["clip_id"].to_pylist() == names[:5]
    np.testing.assert_allclose(np.stack(shared["features"].to_numpy(zero_copy_only=False)),
                               np.stack(alone["features"].to_numpy(zero_copy_only=False)),
                               atol=1e-5)


def test_a_damaged_checkpoint_names_itself_and_offers_the_earlier_one(tmp_path):
    from annotator.core.errors import ConfigError
    from annotator.core.layout import InjectionFolder
    from injection.training.model import Projector
    from injection.training.checkpoint import load_checkpoint

    folder = InjectionFolder(tmp_path)
    for step in (100, 200):
        folder.checkpoint(step).mkdir(parents=True)
    (folder.checkpoint(200) / "projector.safetensors").write_bytes(b"\x00" * 10)  # truncated
    folder.last.write_text("step-000200")
    projector = Projector({"clip": 8}, text_dim=8, dim=8, hidden=0)
    with pytest.raises(ConfigError, match="step-000200 is damaged.*`step-000100`"):
        load_checkpoint(folder, projector)
