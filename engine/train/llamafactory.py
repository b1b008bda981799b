"""LLaMA-Factory's recipes as its users have them: the defaults it gives unset keys, the keys that steer only its
own I/O, its template names and its other stages, each taken over or answered with a sentence.

Values are read from LLaMA-Factory's source (src/llamafactory/hparams/*.py, data/template.py, v0.9.x) and the
transformers TrainingArguments it extends; tests/test_llamafactory.py cites file and line for each.
"""

from typing import Any

# What LLaMA-Factory trains with when a key is unset, for every recipe key whose tuneloop default differs.
# lora_alpha is not here: unset, it is 2 × lora_rank in both.
DEFAULTS: dict[str, Any] = {
    "lora_rank": 8,
    "lora_dropout": 0.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-5,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "logging_steps": 500,
    "packing": False,  # LLaMA-Factory packs only for stage: pt
    "group_by_length": False,
}

# Keys that steer only LLaMA-Factory's own input and output: accepted, and reported as ignored with the reason.
IGNORED: dict[str, str] = {
    "dataset": "the run trains on the dataset version it is given (--dataset), not on dataset_info.json names",
    "eval_dataset": "validation samples come from the dataset version's validation split or val_size",
    "output_dir": "a run writes into its own folder in the artifact store",
    "overwrite_output_dir": "a run writes into its own folder in the artifact store",
    "plot_loss": "every run draws its loss curve (loss_curve.png) anyway",
    "preprocessing_num_workers": "samples are tokenized in the training process",
    "dataloader_num_workers": "batches are read in the training process",
    "ddp_timeout": "processes of a multi-process run wait as long as accelerate lets them",
    "save_only_model": "checkpoints keep the optimizer state, so that a stopped run resumes exactly",
    "trust_remote_code": "models load with transformers' own classes; no code from a model folder is run",
    "overwrite_cache": "no tokenized cache is kept between runs",
    "resume_from_checkpoint": "a stopped run resumes from its own last checkpoint (tuneloop train --resume RUN)",
}

# Keys of a merge (export) YAML, examples/merge_lora/*.yaml.
MERGE_KEYS = ("adapter_name_or_path", "export_dir", "export_size", "export_device", "export_legacy_format")

# LLaMA-Factory's names for the chat formats text models ship with their own template: they mean that template.
OWN_TEMPLATES = frozenset(
    [
        "bailing",
        "bailing_v2",
        "breeze",
        "chatglm3",
        "cohere",
        "cpm4",
        "dbrx",
        "deepseek",
        "deepseek3",
        "deepseekr1",
        "deepseekcoder",
        "ernie",
        "ernie_nothink",
        "exaone",
        "falcon",
        "falcon_h1",
        "gemma",
        "gemma2",
        "gemma3",
        "gemma4",
        "glm4",
        "glm4_moe",
        "glm4_7",
        "glmz1",
        "gpt_oss",
        "granite3",
        "granite4",
        "hunyuan",
        "hunyuan_small",
        "hy3",
        "hy_dense_1_8b",
        "hy_dense_7b",
        "index",
        "intern2",
        "intern_s1",
        "lfm2",
        "llama2",
        "llama2_zh",
        "llama3",
        "llama4",
        "mimo",
        "mimo_v2",
        "minimax1",
        "minimax2",
        "ministral",
        "ministral3",
        "mistral",
        "mistral_small",
        "moonlight",
        "olmo",
        "openchat",
        "openchat-3.6",
        "opencoder",
        "phi",
        "phi_small",
        "phi4",
        "phi4_mini",
        "qwen3",
        "qwen3_nothink",
        "qwen3_5",
        "qwen3_5_nothink",
        "qwen3_6",
        "sailor",
        "seed_coder",
        "seed_oss",
        "smollm",
        "smollm2",
        "solar",
        "starchat",
        "telechat2",
        "xuanyuan",
        "yi",
        "youtu",
        "yuan",
        "zephyr",
    ]
)
# LLaMA-Factory's own prompt formats, which no model was trained with.
OWN_FORMATS = frozenset(["alpaca", "chatml_de", "default", "empty", "fewshot", "vicuna"])
_MULTIMODAL_HINTS = ("vl", "llava", "omni", "audio", "vision", "ocr", "paligemma", "pixtral", "minicpm", "mllama")

STAGES = {
    "pt": "stage: pt (pretraining on plain text) is not supported: tuneloop fine-tunes on conversations (stage: sft)",
    "rm": "stage: rm (reward model training) is not supported: tuneloop trains with stage: sft",
    "ppo": "stage: ppo is not supported: tuneloop trains with stage: sft",
    "kto": "stage: kto is not supported: with stage: sft, KTO data trains on the answers labelled good only",
    "dpo": "stage: dpo (preference training) is not in this version of tuneloop: "
    "stage: sft trains on the chosen answers of preference data",
}


def refusal(values: dict[str, Any], stages: tuple[str, ...]) -> str | None:
    """Why a LLaMA-Factory YAML cannot be a tuneloop recipe at all (a merge YAML, an unsupported stage), if so;
    `stages` are the ones this tuneloop trains."""
    merge = [key for key in MERGE_KEYS if key in values]
    if merge and "do_train" not in values:
        return (
            f"a LLaMA-Factory merge (export) YAML ({', '.join(merge)}), not a training recipe: "
            "merge a run's adapter into its base model with `tuneloop export RUN --merge`"
        )
    stage = values.get("stage", "sft")
    if stage not in stages and stage in STAGES:
        return STAGES[stage]
    return None


def take_over(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A LLaMA-Factory-keyed recipe's values with LLaMA-Factory's defaults under them and its I/O keys taken out,
    and a sentence for each key taken out. A checkpoint to resume from stays in, for the recipe to refuse."""
    ignored = [key for key in IGNORED if key in values and not (key == "resume_from_checkpoint" and values[key])]
    kept = {key: value for key, value in values.items() if key not in ignored}
    return {**DEFAULTS, **kept}, [f"{key}: ignored: {IGNORED[key]}" for key in ignored]


def template_problem(name: str) -> str | None:
    """Why a template name cannot be used, if it cannot (None for LLaMA-Factory names of a model's own template)."""
    if name in OWN_TEMPLATES:
        return None
    if name in OWN_FORMATS:
        return (
            f"template '{name}' is LLaMA-Factory's own prompt format, which no model was trained with: "
            "leave template unset to use the model's own chat template"
        )
    if any(hint in name for hint in _MULTIMODAL_HINTS):
        return f"template '{name}' is for a multimodal model: tuneloop fine-tunes text models only"
    return (
        f"unknown template '{name}': use chatml or qwen, a LLaMA-Factory name of a model's own template "
        "(qwen3, qwen3_nothink, llama3, glm4, ...), a .jinja file, or leave it unset"
    )
