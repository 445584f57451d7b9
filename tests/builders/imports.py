"""What a fresh Python process has imported after running some code: start-up costs (a
library's import) are checked where they are paid, in a process of their own."""

from __future__ import annotations

import json
import subprocess
import sys


def imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Those of `modules` that a fresh interpreter holds after running `code`."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
