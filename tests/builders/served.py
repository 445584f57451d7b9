"""A real `vllm serve` (the CPU build's OpenAI-compatible server) on a free local port, set up
as the in-process vLLM engine sets up its own `LLM` (float32, eager, the guidance backend
without free whitespace, seed 0), so greedy answers can be compared."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STRUCTURED = {"backend": "guidance", "disable_any_whitespace": True}
"""What annotator/engines/vllm_engine.py gives `LLM(structured_outputs_config=)`."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_serve(model: Path, name: str, log: Path, *flags: str, timeout: float = 420):
    """Serve `model` as `name`; yields the base URL (…/v1) once it lists its models."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--seed", "0", "--max-num-seqs", "32",
           "--mm-processor-cache-gb", "0",
           "--structured-outputs-config", json.dumps(STRUCTURED), *flags]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({proc.returncode}): "
                                   f"{log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"vllm serve not up in {timeout} s") from None
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
