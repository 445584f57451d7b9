"""A real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): the pipeline
runs through `--ray-address` with clips prepared on both nodes; losing the worker node mid-run
loses no committed row, and a re-run on what is left completes; a process's own local Ray
lends a second run the CPUs its first run's engine held."""

import json
import subprocess
import sys
import time

import pytest

from annotator.core.store import Store
from tests.conftest import write_manifest

N = 16


def command(manifest, out, model, address, *extra):
    return [sys.executable, "-m", "annotator.cli", "run", "--manifest", str(manifest), "--out",
            str(out), "--model", str(model), "--engine", "fake", "--generation", "one-pass",
            "--ray-address", address, "--batch-size", "2", "--batches-in-flight", "1", *extra]


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = made.add_node(num_cpus=2)
    made.wait_for_nodes()
    yield made, worker
    made.shutdown()


@pytest.mark.slow
def test_two_nodes_prepare_and_a_lost_node_loses_no_committed_row(cluster, clips, tiny_omni,
                                                                   tmp_path):
    made, worker = cluster
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": str(clips[("tone_220", "tone_440", "real_astronaut")[i % 3]]),
         "clip_id": f"n{i:02d}", "label": "neutral"} for i in range(N)])
    out = tmp_path / "out"
    finished = subprocess.run(command(manifest, out, tiny_omni, made.address),
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    timeline = json.loads((out / "run.json").read_text())["engine"]["timeline"]
    assert len(timeline["prepared_on"]) == 2  # both nodes prepared clips

    again = tmp_path / "again"
    run = subprocess.Popen(command(manifest, again, tiny_omni, made.address, "--faults",
                                   "latency=0.3"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(Store(again).read(["clip_id"])) < 4:
        time.sleep(0.1)
    committed = {r["clip_id"]: r["created_at"] for r in Store(again).read().to_pylist()}
    made.remove_node(worker)  # the worker node dies mid-run
    try:
        run.wait(timeout=300)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail("the run hung after losing a node")
    rows = {r["clip_id"]: r["created_at"] for r in Store(again).read().to_pylist()}
    assert all(rows.get(c) == t for c, t in committed.items())  # nothing committed was lost
    resumed = subprocess.run(command(manifest, again, tiny_omni, made.address, "--faults",
                                     "latency=0.3"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = Store(again).read().to_pylist()
    assert sorted(r["clip_id"] for r in final) == [f"n{i:02d}" for i in range(N)]
    assert {r["clip_id"]: r["created_at"] for r in final if r["clip_id"] in committed} \
        == committed


def test_a_run_after_a_run_in_one_process_finds_the_cpus_its_last_engine_held():
    """Ray frees an ended actor's CPUs a moment later: the next run of the same process (the
    tests, a notebook) waits for them on its own local Ray instead of calling them taken."""
    import ray

    from annotator.cluster import cluster_device, ray_init, ray_shutdown
    from annotator.settings import EngineSettings

    class Held:  # defined here: Ray ships it by value (its workers cannot import tests/)
        def ready(self) -> bool:
            return True

    ray_init(None)
    try:
        holder = ray.remote(num_cpus=ray.cluster_resources()["CPU"])(Held).remote()
        ray.get(holder.ready.remote())
        ray.kill(holder)
        assert cluster_device(EngineSettings(device="cpu"), 0.5) == ("cpu", 1)
    finally:
        ray_shutdown()
