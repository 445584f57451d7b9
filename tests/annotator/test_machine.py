"""The CPU's own facts decide a CPU engine's dtype and threads (faked flags and cores here)."""

import pytest

from annotator.core.machine import cpu_dtype, cpu_flags, engine_threads

SAPPHIRE_RAPIDS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
ZEN2 = "flags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize("cpuinfo, dtype", [(SAPPHIRE_RAPIDS, "bfloat16"), (ZEN4, "bfloat16"),
                                            (ZEN2, "float32"), ("", "float32")])
def test_bf16_only_where_the_cpu_has_bf16_instructions(tmp_path, cpuinfo, dtype):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\n" + cpuinfo)
    assert cpu_dtype(cpu_flags(str(path))) == dtype


def test_no_cpuinfo_is_float32(tmp_path):
    assert cpu_dtype(cpu_flags(str(tmp_path / "missing"))) == "float32"


@pytest.mark.parametrize("reads_media, cores, threads", [
    (False, 2, 2), (True, 2, 1), (True, 1, 1), (False, 1, 1), (True, 16, 15)])
def test_engine_threads_leave_a_core_to_media_preparation(reads_media, cores, threads):
    assert engine_threads(reads_media, cores) == threads



def test_auto_dtype_follows_the_cpu_into_the_cache_key_and_a_set_dtype_wins(monkeypatch):
    from annotator.core import machine
    from annotator.settings import EngineSettings

    engine = EngineSettings().engine
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert EngineSettings().key("cpu") == f"{engine}:bfloat16"
    assert EngineSettings().key("gpu") == f"{engine}:auto"  # the model's own
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx2"}))
    assert EngineSettings().key("cpu") == f"{engine}:float32"
    assert EngineSettings(dtype="bfloat16").key("cpu") == f"{engine}:bfloat16"


def test_a_runs_engine_threads_leave_media_a_core_and_the_setting_wins(tmp_path, clips,
                                                                       tiny_omni, monkeypatch):
    from annotator.config import RunConfig
    from annotator.core import machine
    from annotator.resolve import resolve
    from tests.conftest import write_manifest

    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(clips["tone_220"])}])
    config = RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni))
    monkeypatch.setattr(machine, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve(config, "cpu").engine_threads == 3  # the Omni model reads frames and audio
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve(config, "cpu").engine_threads == 1
    chosen = config.model_copy(update={"compute": config.compute.model_copy(
        update={"cpu_threads": 2})})
    assert resolve(chosen, "cpu").engine_threads == 2
    fake = config.model_copy(update={"compute": config.compute.model_copy(
        update={"engine": "fake"})})
    assert resolve(fake, "cpu").engine_threads is None  # no model runs
