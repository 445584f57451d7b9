"""Each decode, sampling and engine setting is declared once, and everything downstream
follows it: the cache key (for the settings that change a row), the engine's options, the
row's recorded sampling, and run.json's config (which re-creates the same RunConfig)."""

import json

import pytest

from annotator.config import RunConfig
from annotator.engines.contract import EngineOptions
from annotator.resolve import resolve
from annotator.settings import (EndpointSettings, EngineSettings, MediaSettings,
                                SamplingSettings)
from annotator.stages.context import RunContext
from annotator.stages.plan import plan_table
from annotator.core.machine import cpu_dtype
from annotator.core.typed_cli import leaf_fields
from tests.conftest import write_manifest

CHANGED = {  # a valid other value for every field of every settings model
    "num_frames": 10, "max_duration_s": 20.0, "max_side": 336, "min_pixels": 28 * 28 * 8,
    "max_pixels": 28 * 28 * 128,
    "temperature": 0.7, "top_p": 0.9, "max_tokens": 1024, "seed": 3,
    "repetition_penalty": 1.1, "generation": "one-pass", "think_tokens": 256, "samples": 3,
    "refine": 2,
    "engine": "vllm", "device": "cpu", "ray_address": "auto",
    "dtype": "float32" if cpu_dtype() == "bfloat16" else "bfloat16",  # not what auto picks here
    "max_model_len": 4096, "cpu_kv_cache_gib": 3, "cpu_threads": 1, "batch_size": 4,
    "faults": "latency=0",
    "max_num_seqs": 8, "batches_in_flight": 2, "tensor_parallel_size": 2,
    "gpu_memory_utilization": 0.8, "media_cache_gib": 1.0,
    "endpoint": "http://gpu-node:8000/v1", "api_key_env": "OTHER_KEY", "send_media": "vllm",
    "structured": "none", "max_concurrency": 4, "requests_per_s": 2.0,
    "connect_timeout_s": 3.0, "read_timeout_s": 60.0, "http_retries": 2,
    "price_per_mtok": "2.5,10",
}
BASE = {"temperature": 0.3, "samples": 2, "engine": "fake"}  # so samples/faults may change
SERVED = {"temperature": 0.3, "samples": 2, "engine": "openai",
          "endpoint": "http://localhost:8000/v1"}  # the endpoint settings' base
SETTINGS = (MediaSettings, SamplingSettings, EngineSettings, EndpointSettings)
PARTS = {"media": MediaSettings, "sampling": SamplingSettings, "compute": EngineSettings,
         "remote": EndpointSettings}
"""RunConfig's field holding each settings model."""


def test_every_setting_is_declared_in_exactly_one_class():
    names = [path[-1] for path, _ in leaf_fields(RunConfig)]
    assert len(names) == len(set(names))
    owners = {name: [cls.__name__ for cls in (RunConfig, *SETTINGS) if name in cls.model_fields]
              for name in names}
    assert all(len(o) == 1 for o in owners.values()), owners
    # the stages and the engine hold the settings models themselves, never copies of fields
    for holder in (EngineOptions, RunContext):
        # their `device` is the device decided for 'auto', not a copy of the setting
        copied = set(holder.__dataclass_fields__) & set(CHANGED) - {"device"}
        assert not copied, f"{holder.__name__} copies {copied}"
    settings = {n for cls in SETTINGS for n in cls.model_fields}
    assert settings == set(CHANGED)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, clips):
    root = tmp_path_factory.mktemp("settings")
    return write_manifest(root / "m.csv", [{"path": str(clips["tone_220"]), "label": "sad"}])


def planned(config: RunConfig) -> tuple[str, EngineOptions, RunContext]:
    resolved = resolve(config, "cpu")
    plan = plan_table(resolved.chosen, resolved.ctx)
    return plan["cache_key"][0].as_py(), resolved.ctx.options, resolved.ctx


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_one_changed_field_moves_key_options_and_run_json(field, manifest, tiny_omni, tmp_path):
    part = next(p for p, cls in PARTS.items() if field in cls.model_fields)
    start = SERVED if part == "remote" else BASE
    base = RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni), **start)
    changed = RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni),
                        **{**start, field: CHANGED[field]})
    key, options, ctx = planned(base)
    new_key, new_options, new_ctx = planned(changed)
    model = getattr(changed, part)
    in_key = field not in model.NOT_IN_KEY
    assert (new_key != key) == in_key, f"{field}: in the cache key should be {in_key}"
    # the engine gets the very models of the config (sampling with 'auto' resolved)
    held = {"media": new_options.media, "compute": new_options.compute,
            "sampling": new_options.sampling, "remote": new_options.remote}[part]
    assert getattr(held, field) == CHANGED[field]
    if part == "sampling":
        assert new_ctx.sampling is new_options.sampling
        assert json.loads(new_ctx.sampling.to_json())[field] == CHANGED[field]
    # run.json records the config; re-reading it gives the same RunConfig back
    recorded = json.loads(json.dumps(changed.model_dump(mode="json")))
    assert recorded[part][field] == CHANGED[field]
    assert RunConfig.model_validate(recorded) == changed


def test_flat_keys_of_an_older_run_json_still_read():
    old = {"manifest": "m.csv", "out": "o", "num_frames": 4, "temperature": 0.2,
           "engine": "transformers", "seed": 5, "batch_size": 2}
    config = RunConfig.model_validate(old)
    assert config.media.num_frames == 4 and config.sampling.seed == 5
    assert config.compute.engine == "transformers" and config.compute.batch_size == 2
