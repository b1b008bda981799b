"""The cpu worker and the chat bots start light: the gate, the judges, the report stages and the run state machine
load without torch or transformers (only generating answers and training need them)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIGHT = (
    "engine.evaluate.gate",
    "engine.evaluate.judge",
    "engine.evaluate.metric_judge",
    "engine.evaluate.run",
    "engine.loop.runs",
    "engine.loop.reviews",
    "engine.work.jobs",
    "engine.work.stages",
)
HEAVY = ("torch", "transformers")


def test_the_gate_judges_runs_and_jobs_import_without_torch_or_transformers() -> None:
    # A fresh interpreter: this one has loaded torch for other tests. The cpu stages' options are built too, as a
    # judge or report job does before it starts.
    script = (
        "import importlib, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        "from engine.work.stages import evaluation_options\n"
        "from storage.models import Project\n"
        "evaluation_options(Project(name='shop', settings={'evaluation': {'max_new_tokens': 16}}))\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_check_sees_torch_when_a_model_module_is_imported() -> None:
    # Guards the test above: the same check run on generation (which does need torch) must see it.
    script = f"import sys, engine.evaluate.generate\nprint(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == str(sorted(HEAVY))
