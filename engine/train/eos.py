"""The check that a trained model stops where its chat template says an answer ends.

The commonest way a fine-tune fails in production is a model that never stops: the template's
end-of-turn token was masked out of the loss, or the saved generation config does not list it as EOS.
This check loads what was saved, exactly as a server would, generates greedily and fails when generation
does not end at the end-of-turn token.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from engine.data.sample import Sample
from engine.train.prepare import end_of_turn_token, message_dicts

EOS_CHECK_PROMPTS = 3  # prompts a check generates for


@dataclass
class EosCheck:
    what: str
    eot: str
    checked: int = 0
    stopped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.checked > 0 and self.stopped == self.checked

    def message(self) -> str:
        if self.passed:
            return f"{self.what}: generation stopped at {self.eot} for {self.stopped}/{self.checked} prompt(s)"
        return f"{self.what}: " + "; ".join(self.problems)


def eos_ids(generation_config: GenerationConfig) -> list[int]:
    ids = generation_config.eos_token_id
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def check_stops(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generation_config: GenerationConfig,
    prompts: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int,
    what: str,
) -> EosCheck:
    """Generate greedily for each prompt; every generation must end with the end-of-turn token."""
    eot = end_of_turn_token(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    check = EosCheck(what=what, eot=eot)
    eos = eos_ids(generation_config)
    if eot_id not in eos:
        check.problems.append(f"the generation config's eos_token_id {eos} does not include {eot} ({eot_id})")
        return check
    model.eval()
    for messages in prompts:
        inputs = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(
                **inputs.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=generation_config.pad_token_id or eos[0],
            )
        new = output[0, inputs["input_ids"].shape[1] :].tolist()
        check.checked += 1
        if new and new[-1] == eot_id:
            check.stopped += 1
            continue
        shown = tokenizer.decode(new[-40:], skip_special_tokens=False)
        ended = "ran to max_new_tokens" if len(new) >= max_new_tokens else f"stopped on token {new[-1:]}"
        check.problems.append(f"generation did not stop at {eot} ({ended}; ends with …{shown!r})")
    return check


def check_saved_model(
    model_dir: Path,
    prompts: Sequence[Sequence[dict]],
    *,
    base_model: str | None = None,
    max_new_tokens: int = 128,
    what: str | None = None,
) -> EosCheck:
    """Load a saved adapter (on `base_model`) or a saved full model the way a server would, and check it."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    generation_config = GenerationConfig.from_pretrained(str(model_dir))
    if base_model is not None:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return check_stops(
        model,
        tokenizer,
        generation_config,
        prompts,
        max_new_tokens=max_new_tokens,
        what=what or ("base+adapter" if base_model else "model"),
    )


def eos_prompts(
    samples: list[Sample], tokenizer: PreTrainedTokenizerBase, cutoff_len: int, count: int = EOS_CHECK_PROMPTS
) -> tuple[list[list[dict]], int]:
    """The first prompts of `samples` (everything before the last answer) and room enough for their answers."""
    chosen = samples[:count]
    prompts = [message_dicts(s)[: s.last_assistant_index()] for s in chosen]
    longest = max(len(tokenizer(s.answer_text(), add_special_tokens=False)["input_ids"]) for s in chosen)
    return prompts, min(cutoff_len, 2 * longest + 16)
