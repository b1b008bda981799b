"""Audit constraints.txt (every version tuneloop installs) with pip-audit against the advisory database.

Exit 1 when a pinned version has a known vulnerability. Where the database cannot be reached (no network, or a
package index that is a mirror without it), say so plainly and exit 0: the audit did not happen, it did not pass.
Run by .ci/run with the project's virtualenv: `.venv/bin/python .ci/audit.py`."""

import json
import subprocess
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
WAIT_S = 300  # pip-audit's own per-request timeout is shorter; this bounds the whole audit


def main() -> int:
    command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--no-deps", "-r", str(LOCK)]
    command += ["--progress-spinner", "off", "--timeout", "15", "--format", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, check=False)
    except subprocess.TimeoutExpired:
        return _not_audited(f"no answer within {WAIT_S} s")
    try:
        dependencies = json.loads(done.stdout)["dependencies"]
    except (ValueError, KeyError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return _not_audited(last[:300])
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        return _not_audited(dependencies[0]["skip_reason"] if dependencies else "nothing to audit")
    vulnerable = [d for d in audited if d.get("vulns")]
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            print(f"pip-audit: {dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {fixed})")
    skipped = len(dependencies) - len(audited)
    print(
        f"pip-audit: {len(audited)} pinned dependencies audited, {len(vulnerable)} with known vulnerabilities"
        + (f"; {skipped} could not be audited" if skipped else "")
    )
    return 1 if vulnerable else 0


def _not_audited(why: str) -> int:
    print(f"pip-audit: the advisory database could not be reached ({why}); dependencies were NOT audited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
