"""`OpenAIEngine`: a model served elsewhere, reached over an OpenAI-compatible
`/chat/completions` (`vllm serve`, SGLang, Ollama, a provider's API).

Its prompt is the conversation as JSON (the chat template is the server's, see
`chat._message_frames`); the media placeholders in it become what --send-media says
(`wire.py`). Requests run on an asyncio loop in a thread of their own: up to
--max-concurrency at once over kept-alive connections, started at most --requests-per-s,
retried on 429, 5xx, timeouts, dropped connections and unreadable answers with exponential
backoff and jitter (Retry-After honoured); what still fails comes back as a failed
Generation, so the clip fails as `engine` and the run goes on.

The API key comes from the environment variable --api-key-env names, read in the driver
(`EndpointSettings.api_key`) and handed to the engine's process in memory (a Ray node
elsewhere lacks the driver's environment); it is sent in the Authorization header only,
and removed from any error text before that leaves this module.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time

from annotator.core.errors import ConfigError
from annotator.engines.contract import EngineOptions, Generation, Request
from annotator.engines.wire import chat_request, media_parts
from annotator.models import ModelSpec

BACKOFF_S = 0.5
"""First retry's wait; doubled per try, up to BACKOFF_MAX_S, with full jitter."""
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0
"""A server's Retry-After is honoured up to this; longer waits are the clip's failure."""
STEP_WAIT_S = 0.05
"""How long `step` waits for an answer before it hands the pump thread back."""


class EndpointError(ConfigError):
    """The endpoint cannot serve this run at all (unreachable, wrong model name, bad key)."""


class OpenAIEngine:
    """Requests to a served model; `step` returns the answers as they arrive."""

    def __init__(self, spec: ModelSpec, options: EngineOptions, api_key: str = ""):
        import httpx

        self.spec, self.options, self.settings = spec, options, options.remote
        self._key = api_key
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        timeout = httpx.Timeout(self.settings.read_timeout_s,
                                connect=self.settings.connect_timeout_s)
        self.url = f"{spec.path}/chat/completions"
        self.startup_s = 0.0
        self._results: queue.Queue[tuple[str, Generation]] = queue.Queue()
        self._outstanding = 0
        self._next_start = 0.0
        self._media: dict[str, tuple[dict, dict]] = {}
        self._media_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="endpoint-io", daemon=True).start()

        async def open_client():
            # the semaphore and lock belong to the loop they are made on
            self._slots = asyncio.Semaphore(self.settings.max_concurrency)
            self._pace_lock = asyncio.Lock()
            return httpx.AsyncClient(
                headers=headers, timeout=timeout,
                limits=httpx.Limits(max_connections=self.settings.max_concurrency,
                                    max_keepalive_connections=self.settings.max_concurrency))

        self._client = self._run(open_client())
        started = time.perf_counter()
        check_endpoint(spec, options, api_key)  # again here: a node elsewhere may not reach it
        self.startup_s = time.perf_counter() - started

    # -- the engine contract -------------------------------------------------------------

    def submit(self, key: str, request: Request) -> None:
        self._outstanding += 1
        asyncio.run_coroutine_threadsafe(self._answer(key, request), self._loop)

    def step(self) -> list[tuple[str, Generation]]:
        if not self._outstanding:
            return []
        try:
            done = [self._results.get(timeout=STEP_WAIT_S)]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self._results.get_nowait())
            except queue.Empty:
                break
        self._outstanding -= len(done)
        return done

    def busy(self) -> bool:
        return self._outstanding > 0

    def generate(self, requests: list[Request]) -> list[Generation]:
        for i, request in enumerate(requests):
            self.submit(str(i), request)
        out: dict[str, Generation] = {}
        while self.busy():
            out.update(self.step())
        return [out[str(i)] for i in range(len(requests))]

    def score(self, request: Request, continuation: list[int]) -> list[float]:
        raise NotImplementedError("a served model gives no teacher-forced log-probabilities "
                                  "of given tokens; score with --engine vllm or transformers")

    # -- requests --------------------------------------------------------------------------

    async def _answer(self, key: str, request: Request) -> None:
        try:
            generation = await self._request(request)
        except Exception as err:  # noqa: BLE001 - one request fails alone, typed
            generation = Generation(error=self._scrub(f"{type(err).__name__}: {err}"))
        self._results.put((key, generation))

    async def _request(self, request: Request) -> Generation:
        import httpx

        # encoding frames and audio is CPU work: off the loop, which keeps the network busy
        body, sent = await asyncio.to_thread(self._body, request)
        content = json.dumps(body).encode()
        sent["request_bytes"] = len(content)
        retries, error = self.settings.http_retries, ""
        async with self._slots:
            for tries in range(1, retries + 2):
                await self._pace()
                wait = _backoff(tries)
                try:
                    response = await self._client.post(
                        self.url, content=content, headers={"Content-Type": "application/json"})
                except httpx.TimeoutException as err:
                    error = f"no answer within the timeout ({type(err).__name__})"
                except httpx.TransportError as err:
                    error = f"the connection failed ({type(err).__name__}: {err})"
                else:
                    code = response.status_code
                    if code == 429 or code >= 500:
                        error = f"HTTP {code}: {_snippet(response.text)}"
                        wait = _retry_after(response.headers.get("retry-after"), wait)
                    elif code >= 400:  # the request itself is wrong: another try cannot help
                        return Generation(error=self._scrub(
                            f"HTTP {code} from {self.spec.path}: {_snippet(response.text)}"))
                    else:
                        try:
                            return to_generation(response.json(), {**sent, "http_tries": tries})
                        except (ValueError, KeyError, IndexError, TypeError) as err:
                            error = f"an unreadable answer ({type(err).__name__}: {err})"
                if tries <= retries:
                    await asyncio.sleep(wait)
        return Generation(error=self._scrub(f"{error}; gave up after {tries} tries"))

    def _body(self, request: Request) -> tuple[dict, dict]:
        """The request's body; a clip's media are encoded once for all its requests (its
        thought and answer, retries, samples), kept for the clips in flight."""
        with self._media_lock:
            media = self._media.pop(request.clip_id, None)
        if media is None:
            media = media_parts(self.settings.send_media, request)
        with self._media_lock:
            self._media[request.clip_id] = media  # the newest last
            while len(self._media) > 2 * self.settings.max_concurrency:
                self._media.pop(next(iter(self._media)))
        return chat_request(self.spec, self.options, request, media)

    async def _pace(self) -> None:
        """Start at most --requests-per-s requests per second."""
        if not self.settings.requests_per_s:
            return
        async with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 1.0 / self.settings.requests_per_s
        await asyncio.sleep(start - now)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _scrub(self, text: str) -> str:
        return _scrubbed(text, self._key)


def check_endpoint(spec: ModelSpec, options: EngineOptions, api_key: str = "") -> None:
    """Fail with what to do when the endpoint cannot serve this run at all: unreachable, a
    key it refuses, or a model it does not list (one GET of /models). The driver asks before
    it plans a clip or starts Ray; the engine asks again where it runs."""
    import httpx

    settings, url = options.remote, f"{spec.path}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(headers=headers, timeout=httpx.Timeout(
                settings.read_timeout_s, connect=settings.connect_timeout_s)) as client:
            response = client.get(url)
    except httpx.HTTPError as err:
        raise EndpointError(_scrubbed(
            f"cannot reach {url} ({type(err).__name__}: {err}); is the server up, and is "
            "--endpoint its base URL (ending in /v1)?", api_key)) from None
    if response.status_code in (401, 403):
        raise EndpointError(f"{url} refused the request (HTTP {response.status_code}); "
                            "put the API key in the variable --api-key-env names "
                            f"(now: {settings.api_key_env or 'none'})")
    if response.status_code != 200:  # some servers do not list their models
        return
    try:
        served = [m["id"] for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return
    if spec.name not in served:
        raise EndpointError(f"{spec.path} does not serve {spec.name!r}; it "
                            f"serves {', '.join(served) or 'nothing'}: pass one as --model")


def _scrubbed(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def to_generation(answer: dict, sent: dict) -> Generation:
    """A Generation from an OpenAI chat.completion object (a live answer or a batch line's
    response body); raises ValueError, KeyError, IndexError or TypeError when it is not one."""
    choice = answer["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise TypeError("the answer has no text content")
    usage = answer.get("usage") or {}
    finish = choice.get("finish_reason") or "stop"
    return Generation(text=text, finish_reason="length" if finish == "length" else "stop",
                      prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      output_tokens=int(usage.get("completion_tokens", 0)), sent=sent)


def _backoff(tries: int) -> float:
    """Exponential backoff with full jitter: clients that failed together retry apart."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (tries - 1)))


def _retry_after(header: str | None, default: float) -> float:
    """The server's Retry-After in seconds (numbers only; an HTTP date falls back)."""
    try:
        return min(max(float(header), 0.0), RETRY_AFTER_MAX_S) if header else default
    except ValueError:
        return default


def _snippet(text: str) -> str:
    return " ".join(text.split())[:300]
