"""The chat templates a recipe can name (`template: chatml`), for a base model whose tokenizer has none."""

# ChatML, as Qwen2.5 writes it (without its default system prompt). Tool calls are rendered the Qwen way.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] %}{{- message['content'] }}{%- endif %}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '\\n<tool_call>\\n' + (call['function'] | tojson) + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "qwen": CHATML_TEMPLATE}
