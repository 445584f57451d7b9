"""What a GPU node or cluster gets from the engine settings, checked on CPU: how many engines,
what each asks Ray for, what vLLM is told, how many batches stream through each engine."""

import pytest

from annotator.engines.contract import EngineOptions
from annotator.engines.vllm_engine import engine_arguments
from annotator.core.errors import ConfigError
from annotator.cluster import engine_pool, engine_resources
from annotator.settings import EngineSettings, SamplingSettings


@pytest.mark.parametrize("gpus,tp,expected", [
    (0, 1, ("cpu", 1)), (1, 1, ("gpu", 1)), (8, 1, ("gpu", 8)), (8, 2, ("gpu", 4)),
    (8, 4, ("gpu", 2)), (6, 4, ("gpu", 1)),
])
def test_one_engine_per_tensor_parallel_group(gpus, tp, expected):
    assert engine_pool(EngineSettings(tensor_parallel_size=tp), gpus) == expected


def test_impossible_pools_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="lower it to at most that"):
        engine_pool(EngineSettings(tensor_parallel_size=4), 2)
    with pytest.raises(ConfigError, match="has no GPU; use --device cpu"):
        engine_pool(EngineSettings(device="gpu"), 0)
    assert engine_pool(EngineSettings(device="cpu"), 8) == ("cpu", 1)


def test_engine_actors_ask_for_their_gpus_and_leave_the_cpus_to_preparation():
    assert engine_resources(EngineSettings(tensor_parallel_size=2), "gpu") == {
        "num_gpus": 2, "num_cpus": 0.25}
    assert engine_resources(EngineSettings(), "cpu") == {"num_cpus": 1}


def options(device: str, **compute) -> EngineOptions:
    return EngineOptions(schema={}, sampling=SamplingSettings(),
                         compute=EngineSettings(**compute), device=device)


def test_vllm_arguments_on_a_gpu_and_on_cpu():
    assert engine_arguments(options("gpu")) == {
        "max_num_seqs": 256, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9}
    assert engine_arguments(options("gpu", tensor_parallel_size=4, max_num_seqs=512,
                                    gpu_memory_utilization=0.8)) == {
        "max_num_seqs": 512, "tensor_parallel_size": 4, "gpu_memory_utilization": 0.8,
        "distributed_executor_backend": "mp"}
    assert engine_arguments(options("cpu", tensor_parallel_size=4)) == {"max_num_seqs": 32}


@pytest.mark.parametrize("device,batch,seqs,in_flight,expected", [
    ("gpu", 16, None, None, 17), ("cpu", 16, None, None, 3), ("gpu", 64, 256, None, 5),
    ("cpu", 16, 16, None, 2), ("gpu", 16, None, 4, 4),
])
def test_batches_in_flight_fill_the_engine_plus_one(device, batch, seqs, in_flight, expected):
    compute = EngineSettings(batch_size=batch, max_num_seqs=seqs, batches_in_flight=in_flight)
    assert compute.in_flight(device) == expected


def test_gpu_settings_never_change_the_cache_key():
    base = EngineSettings().key("gpu")
    for change in ({"tensor_parallel_size": 2}, {"gpu_memory_utilization": 0.5},
                   {"max_num_seqs": 64}, {"batches_in_flight": 2}, {"batch_size": 64}):
        assert EngineSettings(**change).key("gpu") == base


def test_engines_take_the_free_gpus_and_busy_ones_are_said_not_waited_for():
    assert engine_pool(EngineSettings(), 8, free_gpus=3) == ("gpu", 3)
    assert engine_pool(EngineSettings(tensor_parallel_size=2), 8, free_gpus=5) == ("gpu", 2)
    with pytest.raises(ConfigError, match=r"8 GPU\(s\) are busy \(1 free, an engine needs 2\)"):
        engine_pool(EngineSettings(tensor_parallel_size=2), 8, free_gpus=1)
    with pytest.raises(ConfigError, match="every CPU of the Ray cluster is taken"):
        engine_pool(EngineSettings(), 0, free_cpus=0.5)
    # a cluster of one CPU holds the engine but never a task to prepare its clips: refused,
    # not a run that waits forever
    with pytest.raises(ConfigError, match="1 CPU.*in all.*need 1.5"):
        engine_pool(EngineSettings(), 0, free_cpus=1.0, prepare_cpus=0.5, total_cpus=1)
    assert engine_pool(EngineSettings(), 0, free_cpus=1.0, prepare_cpus=0.5,
                       total_cpus=2) == ("cpu", 1)
    assert engine_pool(EngineSettings(), 8, free_gpus=8, free_cpus=2.5, prepare_cpus=0.5,
                       total_cpus=2.5) == ("gpu", 8)


def test_refused_credentials_are_not_reported_as_a_missing_cluster():
    from annotator.cluster import join_failure

    said = join_failure("10.0.0.1:6379", ConnectionError("Unauthenticated: invalid token"))
    assert "refused this client's credentials" in said and "RAY_AUTH_MODE=token" in said
    assert "ray start --head" in join_failure("10.0.0.1:6379", ConnectionError("timed out"))
