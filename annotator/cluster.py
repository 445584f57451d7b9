"""The Ray cluster a run uses: starting or joining it, what engines it can hold now, and
turning Ray's errors into one line.

A local run starts its own Ray (never a cluster `ray start` left on the machine); with
--ray-address it joins that cluster. Resources that are not free are refused at once with the
fix, never waited for (on its own local Ray, a run waits only for the moment Ray takes to free
what an earlier run of the same process held).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings

from annotator.core.errors import ConfigError
from annotator.core.interrupt import reclaim, settle
from annotator.engines import ENGINES
from annotator.settings import EngineSettings

_joined: list[str | None] = []
"""The --ray-address this process's Ray session was started for (None: a local one)."""


def ray_init(address: str | None) -> None:
    """Start Ray locally, or join the cluster at `address`; a session this process already
    has is reused only when it was made for the same address (a second run in one process,
    as in the tests, must not run on a local session when asked for a cluster)."""
    # never a session started behind our back: a thread still reading a stream after an
    # interrupted run's shutdown would otherwise start a new Ray (read when ray is imported)
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    import ray

    if ray.is_initialized():
        if _joined and _joined[-1] == address:
            return
        ray.shutdown()
    _joined[:] = [address]
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            _joined.clear()
            raise ConfigError(join_failure(address, err)) from err
    else:  # "local": never join a cluster `ray start` left running on this machine
        ray.init(address="local", num_cpus=os.cpu_count(), _system_config=LOCAL_RAY, **kwargs)
    reclaim()  # ray.init replaced the SIGTERM handler of a writing command


LOCAL_RAY = {
    # Ray starts its workers at nice 15, the engine's actor among them; at 0 the engine's
    # thread outweighs the idle-priority prepare threads 340:1 instead of 12:1 on a shared
    # core (its wait for a CPU: 1.6 s -> 0.5 s of an 18 s run on 2 cores)
    "worker_niceness": 0,
    # a worker that has imported Ray Data, the decoders and the cue models (2-3 s of CPU) is
    # kept a minute after its last task, not Ray's one second: the runs of one process (retry
    # rounds, a notebook, the tests) then reuse it (6 runs of 16 clips in one process: 12 -> 6
    # new processes, 37 -> 19 s of CPU in Ray's processes); a busy cluster is not held longer
    "idle_worker_killing_time_threshold_ms": 60_000,
}
"""The system settings of the Ray a local run starts for itself."""


def ray_shutdown() -> None:
    """End this process's Ray session, if it has one (an interrupted run's engines go).

    The streams it runs stop first: a thread still inside Ray (Ray Data's executor, the helper
    reading its output) when the core worker shuts down ends the process with exit 1 and
    "core worker has already been shutdown", in place of the interrupt's own exit code."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        _stop_streams()
        settle(STREAMS_STOP_S)
        sys.modules["ray"].shutdown()
    _joined.clear()


STREAMS_STOP_S = 10.0
"""The longest an interrupted run waits for its streams' readers to stop before Ray goes."""


def _stop_streams() -> None:
    """Shut down the executors of the Ray Data streams still running in this process, with
    their actors; their readers then see the end of the stream at once."""
    if "ray.data" not in sys.modules:
        return
    # Ray Data has no public call to stop a stream that another thread reads (a consumer
    # would close the iterator, but the reader thread is blocked inside it); its executor is
    # a thread of this process, so it is found among them
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    for thread in threading.enumerate():
        if isinstance(thread, StreamingExecutor):
            thread.shutdown(force=True)


def join_failure(address: str, err: Exception) -> str:
    """What to say when joining a cluster fails: refused credentials are not a missing
    cluster."""
    text = str(err)
    if any(word in text.lower() for word in ("auth", "token", "unauthenticated")):
        return (f"the Ray cluster at --ray-address {address} refused this client's "
                f"credentials ({text.strip().splitlines()[0][:200]}); with token "
                "authentication set RAY_AUTH_MODE=token and the cluster's token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token), then run again")
    return (f"cannot join a Ray cluster at --ray-address {address} ({text}); start one with "
            "`ray start --head`, or leave --ray-address out to run locally")


def cluster_device(compute: EngineSettings, prepare_cpus: float = 0.0) -> tuple[str, int]:
    """(device, engine actors) from what the joined Ray cluster has free now (`engine_pool`;
    with `prepare_cpus`, also refused when its CPUs could never hold the engines and a
    prepare task)."""
    import ray

    total = ray.cluster_resources()
    free = settled(total) if _joined == [None] else ray.available_resources()
    return engine_pool(compute, int(total.get("GPU", 0)), int(free.get("GPU", 0)),
                       float(free.get("CPU", 0)), prepare_cpus,
                       float(total.get("CPU", 0)) if prepare_cpus else None)


def settled(total: dict, wait_s: float = 30.0) -> dict:
    """The free resources of this process's own local Ray once its earlier runs' engines and
    tasks are gone: only they can hold any, and Ray frees them a moment after a run ends
    (the next run in one process would otherwise find its CPUs taken). Bounded: after
    `wait_s` what is free then."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        if all(free.get(k, 0) >= total.get(k, 0) for k in ("CPU", "GPU")) \
                or time.monotonic() > deadline:
            return free
        time.sleep(0.1)


def engine_pool(compute: EngineSettings, gpus: int, free_gpus: int | None = None,
                free_cpus: float = 1.0, prepare_cpus: float = 0.0,
                total_cpus: float | None = None) -> tuple[str, int]:
    """(device, engine actors) for a cluster with `gpus` GPUs of which `free_gpus` are free:
    one engine per --tensor-parallel-size free GPUs, or one on CPU. Resources that are not
    free are refused at once with a message, never waited for; so is a cluster whose
    `total_cpus` cannot hold the engines and one task preparing clips (`prepare_cpus`)
    beside them: its run would wait forever for a slot."""
    device, actors = _pool(compute, gpus, gpus if free_gpus is None else free_gpus, free_cpus)
    need = actors * engine_resources(compute, device)["num_cpus"] + prepare_cpus
    if total_cpus is not None and total_cpus < need:
        raise ConfigError(
            f"the Ray cluster has {total_cpus:g} CPU(s) in all; {actors} engine(s) on "
            f"{device} and one task preparing clips need {need:g}: add a node, or start "
            "the cluster with more --num-cpus")
    return device, actors


def _pool(compute: EngineSettings, gpus: int, free_gpus: int, free_cpus: float
          ) -> tuple[str, int]:
    if compute.device == "gpu" and gpus == 0:
        raise ConfigError("--device gpu, but the Ray cluster has no GPU; use --device cpu "
                          "(or auto) on this machine, or join a GPU cluster with --ray-address")
    if compute.device == "cpu" or gpus == 0:
        if free_cpus < 1:
            raise ConfigError("every CPU of the Ray cluster is taken, and the engine needs "
                              "one; wait for the other jobs or add a node")
        return "cpu", 1
    tp = compute.tensor_parallel_size
    if tp > gpus:
        raise ConfigError(f"--tensor-parallel-size {tp}, but the Ray cluster has {gpus} "
                          "GPU(s): lower it to at most that")
    if free_gpus < tp:
        raise ConfigError(f"the Ray cluster's {gpus} GPU(s) are busy ({free_gpus} free, an "
                          f"engine needs {tp}); wait for the other jobs to end, or lower "
                          "--tensor-parallel-size")
    return "gpu", free_gpus // tp


def engine_resources(compute: EngineSettings, device: str) -> dict:
    """What one engine actor asks Ray for. On GPUs: its GPUs and no CPU beyond a share (vLLM's
    own tensor-parallel workers take theirs), so prepare tasks keep the node's CPUs; on CPU:
    one core (its --cpu-threads may use more: prepare tasks run at idle priority beside
    it); a served model's engine only waits on the network."""
    if ENGINES[compute.engine].served:
        return {"num_cpus": 0.25}
    if device == "gpu":
        return {"num_gpus": compute.tensor_parallel_size, "num_cpus": 0.25}
    return {"num_cpus": 1}


def root_cause(err: BaseException) -> str:
    """The first error a Ray task raised, as one line: Ray wraps it in its own errors, whose
    messages end with Ray's advice rather than the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (found[0] if found else f"{type(err).__name__}: {lines[-1] if lines else ''}")[:300]


def quiet_ray_data() -> None:
    """Our own progress and error messages replace Ray Data's (it logs a died engine's
    traceback, which the driver turns into a restart or a one-line message)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    # an actor's restart policy (max_restarts, max_task_retries) has no named parameter in
    # map_batches yet: passed as remote args, which Ray 2.60 calls deprecated at every run
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
