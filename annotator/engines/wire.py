"""A clip's media as a served model takes them over the wire (--send-media).

- `vllm`: `vllm serve` of a Qwen2.5-Omni-class model. The sampled frames go as one video in
  vLLM's frame-list form (`data:video/jpeg;base64,F1,F2,...`; each frame as an uncompressed
  BMP, which vLLM's image loader reads as well: the server gets the very pixels an in-process
  engine gets, and 8 frames cost 3 ms to write and 19 ms to read where PNG took 85 and 100,
  measured here, at 2.2x the bytes) with their fps, and the audio as a float32 WAV
  `audio_url`. The audio is its own item after the video: vLLM's server interleaves audio
  with video (`use_audio_in_video`) only when it extracts the audio from an encoded video
  file itself.
- `parts`: providers' vision and audio models. The frames as `image_url` JPEG parts, the audio
  as 16-bit `input_audio` WAV (what OpenAI's and Gemini's compatible APIs accept).
- `text`: nothing but the text prompt (the cue-grounded text template).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import wave

import numpy as np

from annotator.core.media import SAMPLE_RATE
from annotator.engines.contract import EngineOptions, Request
from annotator.models import ModelSpec
from annotator.settings import MediaSettings

JPEG_QUALITY = 90


def chat_request(spec: ModelSpec, options: EngineOptions, request: Request,
                 media: tuple[dict, dict] | None = None) -> tuple[dict, dict]:
    """(the /chat/completions body, what it sends) for one request: its messages with the
    media in place (`media`: the clip's `media_parts`, if made already), the run's sampling,
    the budget and the JSON schema it must follow."""
    sampling, settings = options.sampling, options.remote
    parts, sent = media or media_parts(settings.send_media, request)
    body: dict = {"model": spec.name,
                  "messages": _with_media(json.loads(request.prompt), parts),
                  "max_tokens": request.max_tokens or sampling.max_tokens,
                  "temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.temperature > 0:  # greedy needs no seed (and vLLM on CPU rejects one)
        body["seed"] = sampling.seed
    if sampling.repetition_penalty != 1.0:  # a vLLM/SGLang extension; providers lack it
        body["repetition_penalty"] = sampling.repetition_penalty
    body.update(request_media(settings.send_media, request, options.media))
    enforced = "free text"
    if request.guided:
        enforced = "validated here"
        if settings.structured == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "description", "schema": options.schema, "strict": True}}
            enforced = "json_schema"
    return body, {**sent, "enforced": enforced}


def _with_media(messages: list[dict], parts: dict[str, list[dict]]) -> list[dict]:
    """The messages with each media placeholder (`{"type": "video"}`, `{"type": "audio"}`)
    replaced by the parts that carry it."""
    for message in messages:
        if isinstance(message["content"], list):
            message["content"] = [p for part in message["content"]
                                  for p in parts.get(part["type"], [part])]
    return messages


def media_parts(send: str, request: Request) -> tuple[dict[str, list[dict]], dict]:
    """(content parts for each media placeholder type, what is sent: frames, seconds of
    audio). A placeholder whose media the clip lacks is dropped."""
    frames, audio = request.frames, request.audio
    if send == "text":
        frames = audio = None
    sent = {"frames": 0 if frames is None else len(frames),
            "audio_s": 0.0 if audio is None else round(len(audio) / SAMPLE_RATE, 3)}
    voice = [] if audio is None else [_audio_part(send, audio)]
    if frames is None:
        return {"video": voice, "audio": voice}, sent
    if send == "vllm":
        video = [{"type": "video_url", "video_url": {
            "url": "data:video/jpeg;base64," + ",".join(_encoded(f, ".bmp") for f in frames)}}]
    else:
        video = [{"type": "image_url", "image_url": {
            "url": "data:image/jpeg;base64," + _encoded(f, ".jpg")}} for f in frames]
    return {"video": video + voice if request.audio_in_video else video, "audio": voice}, sent


def request_media(send: str, request: Request, media: MediaSettings) -> dict:
    """Request fields beside the messages that tell vLLM's server how to process the media
    as the in-process engine does (frame rate, pixel bounds)."""
    if send != "vllm" or request.frames is None:
        return {}
    fps = float(request.fps or 1.0)
    return {"media_io_kwargs": {"video": {"fps": fps}},
            "mm_processor_kwargs": {"fps": fps, "min_pixels": media.min_pixels,
                                    "max_pixels": media.max_pixels}}


def _audio_part(send: str, audio: np.ndarray) -> dict:
    if send == "vllm":
        return {"type": "audio_url", "audio_url": {
            "url": "data:audio/wav;base64," + _b64(float_wav(audio))}}
    return {"type": "input_audio", "input_audio": {"data": _b64(pcm16_wav(audio)),
                                                   "format": "wav"}}


def _encoded(frame: np.ndarray, ext: str) -> str:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, np.ascontiguousarray(frame[..., ::-1]), params)  # RGB->BGR
    if not ok:
        raise ValueError(f"a frame of shape {frame.shape} could not be encoded as {ext}")
    return _b64(data.tobytes())


def float_wav(audio: np.ndarray) -> bytes:
    """Mono IEEE-float WAV at SAMPLE_RATE: the samples exactly as decoded."""
    data = np.asarray(audio, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, SAMPLE_RATE, SAMPLE_RATE * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def pcm16_wav(audio: np.ndarray) -> bytes:
    """Mono 16-bit PCM WAV at SAMPLE_RATE (what providers accept)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
