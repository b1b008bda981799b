"""The cpu worker and the chat bots start light: the gate, the judges, the report stages and the run state machine
load without torch or transformers (only generating answers and training need them)."""

import subprocess
import sys
from pathlib import Path

from engine.database import get_engine

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


def loaded_in_fresh_process(script: str, names: tuple[str, ...]) -> str:
    """The last line a fresh interpreter prints after `script`: which of `names` it has loaded, sorted."""
    script += f"import sys\nprint(sorted(name for name in {names!r} if sys.modules.get(name)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr


def test_the_gate_judges_runs_and_jobs_import_without_torch_or_transformers() -> None:
    # A fresh interpreter: this one has loaded torch for other tests. The cpu stages' options are built too, as a
    # judge or report job does before it starts.
    script = (
        "import importlib\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        "from engine.work.stages import evaluation_options\n"
        "from storage.models import Project\n"
        "evaluation_options(Project(name='shop', settings={'evaluation': {'max_new_tokens': 16}}))\n"
    )
    assert loaded_in_fresh_process(script, HEAVY) == "[]"


def test_the_check_sees_torch_when_a_model_module_is_imported() -> None:
    # Guards the test above: the same check run on generation (which does need torch) must see it.
    assert loaded_in_fresh_process("import engine.evaluate.generate\n", HEAVY) == str(sorted(HEAVY))


OPTIONAL = ("openai", "jieba", "datasketch", "matplotlib", "alembic", "bitsandbytes", "torch._inductor.compile_fx")


def test_the_terminal_loads_no_library_only_some_commands_use() -> None:
    # `tuneloop train` imports every command and opens the database before its first step: the OpenAI client
    # (synthesis, judging), jieba's keyword extraction (targeting), datasketch (near-duplicates), matplotlib
    # (charts) and alembic (a database to migrate) load where they are used; and a LoRA run leaves bitsandbytes
    # (QLoRA only, with torch's compiler under it) unloaded.
    get_engine()  # the test's database, migrated here: the process below finds it at the latest revision
    script = (
        "import bot.cli\n"
        "from engine.database import get_engine\n"
        "get_engine()\n"
        "from engine.train.recipe import Recipe\n"
        "from engine.train.stack import leave_out_unneeded\n"
        "leave_out_unneeded(Recipe())\n"
        "import peft, engine.train.sft\n"
    )
    assert loaded_in_fresh_process(script, OPTIONAL) == "[]"
