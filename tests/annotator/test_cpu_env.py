import subprocess
import sys

import pytest


@pytest.mark.slow  # imports the real vLLM, which the fast tier leaves out
def test_cpu_environment_imports_vllm_torchvision_and_omni_processing():
    probe = subprocess.run([sys.executable, "-m", "annotator.cpu_env", "check"],
                           capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr


def test_torchvision_transforms_work_beside_cpu_torch():
    import torch
    from torchvision.transforms.v2 import functional as F

    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    assert F.resize(image, [20, 30]).shape == (3, 20, 30)
