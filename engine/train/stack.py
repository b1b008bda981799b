"""What a training process loads, and what it can leave out.

peft and transformers import bitsandbytes whenever it is installed, and bitsandbytes registers its kernels with
torch's compiler, which loads torch._inductor: about a second and a half before the first step of a run that
quantizes nothing (measured with `python -X importtime`, bench/peer.py). Only QLoRA needs it."""

import sys

from engine.train.recipe import Recipe


def leave_out_unneeded(recipe: Recipe) -> None:
    """Before the training stack is imported in a process that trains only `recipe`: unless it is QLoRA, make
    bitsandbytes look absent (a None in sys.modules is importlib's "not installed": find_spec returns None and
    an import raises ImportError), so that peft and transformers skip it. A process that may train other recipes
    later (a worker) must not call this."""
    if recipe.finetuning_type != "qlora" and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
