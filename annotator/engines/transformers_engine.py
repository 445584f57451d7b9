"""transformers engine: `generate` with the model's own processor, guided by llguidance.

The reference path: slower than vLLM, but it is the model's original implementation, so it
checks vLLM's numerics (teacher-forced logprobs) and runs where vLLM is not installed. The JSON
schema is enforced by the same grammar engine vLLM's guidance backend uses (llguidance), as a
logits processor.
"""

from __future__ import annotations

import json

import torch

from annotator.engines.contract import EngineOptions, Generation, Request, step_queued
from annotator.chat import media_inputs
from annotator.models import ModelSpec


class _SchemaMask:
    """A transformers logits processor that masks tokens the JSON schema forbids."""

    def __init__(self, tokenizer, schema: dict, batch: int, vocab: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch as llt

        ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False})
        self.matchers = [llguidance.LLMatcher(ll_tokenizer, grammar) for _ in range(batch)]
        self.bitmask = llt.allocate_token_bitmask(batch, vocab)
        self._llt = llt
        self._started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._started:  # advance each matcher by the token just sampled
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist()):
                if not matcher.is_stopped():
                    matcher.consume_token(token)
        self._started = True
        for i, matcher in enumerate(self.matchers):
            self._llt.fill_next_token_bitmask(matcher, self.bitmask, i)
        self._llt.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores


class TransformersEngine:
    """The model's own transformers implementation, one request at a time, on the GPU when
    the run's device is one (bf16 there unless --dtype says otherwise), else float32 on CPU."""

    def __init__(self, spec: ModelSpec, options: EngineOptions):
        from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

        self.spec = spec
        self.options = options
        self.queue: list[tuple[str, Request]] = []
        self.device = torch.device("cuda" if options.device == "gpu" else "cpu")
        dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[options.dtype]
        if spec.family == "omni":
            from transformers import AutoConfig, Qwen2_5OmniThinkerForConditionalGeneration

            self.processor = AutoProcessor.from_pretrained(spec.path)
            config = AutoConfig.from_pretrained(spec.path)
            # load only the thinker (the text-generating part) from a full Omni checkpoint
            self.model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                spec.path, config=getattr(config, "thinker_config", config),
                key_mapping={r"^thinker\.": ""}, dtype=dtype)
            self.tokenizer = self.processor.tokenizer
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(spec.path)
            self.model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype)
        self.model.to(self.device).eval()
        self.eos = _eos_ids(self.model, self.tokenizer)
        self.calls = 0  # seeds each generation apart, so repeated samples differ

    def _encode(self, request: Request) -> dict:
        if self.processor is None:
            return dict(self.tokenizer(request.prompt, return_tensors="pt",
                                       add_special_tokens=False).to(self.device))
        data, kwargs = media_inputs(self.spec, request.frames, request.fps, request.audio,
                                    self.options.media.min_pixels, self.options.media.max_pixels,
                                    request.audio_in_video)
        inputs = {"text": [request.prompt]}
        if "video" in data:
            inputs["videos"] = [data["video"]]
        if "audio" in data:
            inputs["audio"] = [data["audio"][0]]
        size = {"shortest_edge": kwargs["min_pixels"], "longest_edge": kwargs["max_pixels"]}
        encoded = self.processor(
            **inputs, return_tensors="pt", use_audio_in_video=kwargs["use_audio_in_video"],
            videos_kwargs={"size": size, "fps": kwargs.get("fps"), "do_sample_frames": False})
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                for k, v in encoded.items()}

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[Generation]:
        return [self._generate_one(r) for r in requests]

    def submit(self, key: str, request: Request) -> None:
        self.queue.append((key, request))

    def step(self) -> list[tuple[str, Generation]]:
        return step_queued(self.queue, self.generate, 1)  # it decodes one at a time anyway

    def busy(self) -> bool:
        return bool(self.queue)

    def _generate_one(self, request: Request) -> Generation:
        s = self.options.sampling
        try:
            inputs = self._encode(request)
            vocab = self.model.get_output_embeddings().weight.shape[0]
            masks = [_SchemaMask(self.tokenizer, self.options.schema, 1, vocab)] \
                if request.guided else []
            max_tokens = request.max_tokens or s.max_tokens
            torch.manual_seed(s.seed + self.calls)
            self.calls += 1
            extra = {"use_audio_in_video": True} if inputs.get("video_second_per_grid") \
                is not None and request.audio is not None and request.audio_in_video else {}
            out = self.model.generate(
                **inputs, **extra, max_new_tokens=max_tokens, do_sample=s.temperature > 0,
                temperature=s.temperature or None, top_p=s.top_p if s.temperature else None,
                repetition_penalty=s.repetition_penalty if s.repetition_penalty != 1 else None,
                logits_processor=masks, eos_token_id=self.eos, pad_token_id=self.eos[0],
                output_logits=True, return_dict_in_generate=True)
        except Exception as err:
            return Generation(error=f"{type(err).__name__}: {err}")
        prompt_len = inputs["input_ids"].shape[1]
        tokens = out.sequences[0, prompt_len:].tolist()
        stopped = bool(tokens) and tokens[-1] in self.eos
        raw = torch.stack(out.logits, 1)[0].float().log_softmax(-1)
        logprobs = raw.gather(1, torch.tensor(tokens, device=raw.device)[:, None])[:, 0].tolist()
        text_tokens = tokens[:-1] if stopped else tokens
        return Generation(
            text=self.tokenizer.decode(text_tokens, skip_special_tokens=True),
            token_ids=tokens,
            prompt_token_ids=inputs["input_ids"][0].tolist(),
            finish_reason="stop" if stopped or len(tokens) < max_tokens else "length",
            logprobs=logprobs,
        )

    @torch.inference_mode()
    def score(self, request: Request, continuation: list[int]) -> list[float]:
        inputs = self._encode(request)
        prompt_len = inputs["input_ids"].shape[1]
        tail = torch.tensor([continuation], dtype=inputs["input_ids"].dtype,
                            device=self.device)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if request.audio is not None and request.frames is not None and request.audio_in_video:
            inputs["use_audio_in_video"] = True
        logits = self.model(**inputs).logits[0].float().log_softmax(-1)
        positions = torch.arange(prompt_len - 1, prompt_len - 1 + len(continuation),
                                 device=self.device)
        return logits[positions, tail[0]].tolist()


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    for token in ("<|im_end|>", tokenizer.eos_token):
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid >= 0 and tid not in ids and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return ids
