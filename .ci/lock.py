"""Write constraints.txt: every package tuneloop installs (its dependencies with the extras dev, slack and telegram,
and theirs), resolved together by pip at their newest allowed versions, one `name==version` a line.

Run it with the project's virtualenv after changing pyproject.toml's dependencies (`make lock`), then run the tests.
A local build label (torch's `+cpu`) is dropped: the constraint then admits whichever build of that release is at
hand, the CPU one in CI, the CUDA one in a GPU image."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# The versions tuneloop installs, every dependency of the product (extras dev, slack, telegram) and of theirs,
# resolved together: the Makefile and the Dockerfile install with `pip install -c constraints.txt ...`, and .ci/run
# audits this file with pip-audit. Regenerate after changing pyproject.toml's dependencies: `make lock`.
"""
NOT_PINNED = {"tuneloop", "pip"}  # the project itself, and the installer that reads this file


def main() -> None:
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", "-", f"{ROOT}[dev,slack,telegram]"]
    report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    pins = sorted(
        (
            f"{item['metadata']['name']}=={re.sub(r'[+].*$', '', item['metadata']['version'])}"
            for item in report["install"]
            if item["metadata"]["name"].lower() not in NOT_PINNED
        ),
        key=str.lower,
    )
    (ROOT / "constraints.txt").write_text(HEADER + "\n".join(pins) + "\n", encoding="utf-8")
    print(f"constraints.txt: {len(pins)} pinned versions")


if __name__ == "__main__":
    main()
