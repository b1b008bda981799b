"""`tuneloop serve` as its clients see it: real server processes on loopback, driven through the openai client
(chat, completions, streaming) and httpx (vLLM's LoRA admin endpoints), on a tiny local model with random
adapters. Two server processes in all: the shared one (nested errors, three preloaded adapters) and one with
flat errors and --max-loras 1. The text decoder under streaming is tested on its own at the end."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.serve.batching import AnswerStream, Finished, GenerationJob, ModelEntry, Sampling, TextDelta
from engine.serve.protocol import DEFAULT_MAX_REQUEST_BYTES, BadRequestError
from engine.serve.server import Renderer, chat_prompt_ids
from engine.train.tiny import IM_END, TinySpec, build_tiny_model
from tests.serving import ROOT, ServeProcess, make_adapter, running_server

BASE_NAME = "tiny"
PRELOADED = ("shop", "travel", "bank")
MAX_TOKENS = 16
QUESTIONS = {
    "zh": "你好，我的订单什么时候发货？",
    "en": "Hello, when will my order ship?",
    "mixed": "请问 refund 需要几天？",
    "long": "我买的鞋子尺码不合适，想换大一号，请问需要自己付运费吗？还有多久能收到？",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    base = build_tiny_model(root / "base")
    paths = {"base": base}
    for seed, name in enumerate([*PRELOADED, "extra", "other"], start=1):
        paths[name] = make_adapter(base, root / name, seed=seed)
    paths["wide"] = make_adapter(base, root / "wide", rank=32, seed=9)
    narrow = build_tiny_model(root / "narrow", spec=TinySpec(hidden_size=32, intermediate_size=96))
    paths["foreign"] = make_adapter(narrow, root / "foreign", seed=10)  # another base's: its shapes do not fit
    return paths


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    preload = [arg for name in PRELOADED for arg in ("--lora-modules", f"{name}={models[name]}")]
    args = ["--served-model-name", BASE_NAME, "--max-loras", "5", "--max-lora-rank", "16", *preload]
    with running_server(models["base"], tmp_path_factory.mktemp("logs"), args=args) as process:
        yield process


def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def chat(server: ServeProcess, model: str, question: str, **options) -> openai.types.chat.ChatCompletion:
    messages = [{"role": "user", "content": question}]
    options = {"max_tokens": MAX_TOKENS, "temperature": 0, **options}
    return client(server).chat.completions.create(model=model, messages=messages, **options)


def answer(server: ServeProcess, model: str, question: str, **options) -> str:
    return chat(server, model, question, **options).choices[0].message.content


def admin(server: ServeProcess, action: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/{action}_lora_adapter", json=body, headers=server.headers, timeout=60)


def listed(server: ServeProcess) -> dict[str, dict]:
    models = httpx.get(f"{server.base_url}/models", headers=server.headers).json()
    return {card["id"]: card for card in models["data"]}


def stats(server: ServeProcess) -> dict:
    return httpx.get(f"{server.url}/stats").json()


def error_of(response: httpx.Response, error_format: str) -> dict:
    body = response.json()
    if error_format == "flat":
        assert body["object"] == "error"
        return body
    assert set(body) == {"error"}
    return body["error"]


# Models and adapters


def test_models_lists_the_base_then_the_preloaded_adapters(server: ServeProcess, models: dict[str, Path]) -> None:
    cards = httpx.get(f"{server.base_url}/models", headers=server.headers).json()
    assert cards["object"] == "list"
    base, *adapters = cards["data"]
    assert base | {"created": 0} == {
        "id": BASE_NAME,
        "object": "model",
        "created": 0,
        "owned_by": "vllm",
        "root": str(models["base"]),
        "parent": None,
        "max_model_len": 4096,
    }
    assert [(a["id"], a["root"], a["parent"]) for a in adapters] == [
        (name, str(models[name]), BASE_NAME) for name in PRELOADED
    ]
    assert [m.id for m in client(server).models.list()] == [BASE_NAME, *PRELOADED]


def test_load_chat_unload(server: ServeProcess, models: dict[str, Path]) -> None:
    question = QUESTIONS["zh"]
    loaded = admin(server, "load", {"lora_name": "extra", "lora_path": str(models["extra"])})
    assert (loaded.status_code, loaded.text) == (200, "Success: LoRA adapter 'extra' added successfully.")
    assert loaded.headers["content-type"].startswith("text/plain")
    try:
        assert listed(server)["extra"]["parent"] == BASE_NAME
        assert answer(server, "extra", question) != answer(server, BASE_NAME, question)
    finally:
        unloaded = admin(server, "unload", {"lora_name": "extra"})
    assert (unloaded.status_code, unloaded.text) == (200, "Success: LoRA adapter 'extra' removed successfully.")
    assert "extra" not in listed(server)
    with pytest.raises(openai.NotFoundError, match=r"The model `extra` does not exist\."):
        chat(server, "extra", question)


def check_admin_errors(server: ServeProcess, models: dict[str, Path], error_format: str, loaded: str) -> None:
    """Every failure of the two admin endpoints, with vLLM's status codes and error types."""
    cases = [
        ("load", {"lora_name": loaded, "lora_path": str(models["other"])}, 400, "has already been loaded"),
        ("load", {"lora_name": "x"}, 400, "lora_path"),
        ("load", {"lora_name": "", "lora_path": str(models["other"])}, 400, "must be provided"),
        ("load", {"lora_name": "x", "lora_path": str(models["base"] / "missing")}, 404, "No adapter found"),
        ("load", {"lora_name": "x", "lora_path": str(models["base"])}, 404, "No adapter found"),  # no adapter_config
        ("load", {"lora_name": "x", "lora_path": str(models["wide"])}, 400, "rank 32 is greater than max_lora_rank 16"),
        ("unload", {"lora_name": "never-loaded"}, 404, "cannot be found"),
        ("unload", {}, 400, "lora_name"),
    ]
    types = {400: "BadRequestError", 404: "NotFoundError"}
    invalid_user_input = ("has already been loaded", "must be provided")  # vLLM's own type for these two
    for action, body, status, words in cases:
        response = admin(server, action, body)
        assert response.status_code == status, (body, response.text)
        error = error_of(response, error_format)
        kind = "InvalidUserInput" if words in invalid_user_input else types[status]
        assert (error["type"], error["code"], error["param"]) == (kind, status, None)
        assert words in error["message"]
    url = f"{server.base_url}/load_lora_adapter"
    not_json = httpx.post(url, content=b"{not json", headers=server.headers, timeout=10)
    assert not_json.status_code == 400  # FastAPI's 422 becomes vLLM's 400
    assert error_of(not_json, error_format)["type"] == "BadRequestError"


def test_admin_errors_nested(server: ServeProcess, models: dict[str, Path]) -> None:
    check_admin_errors(server, models, "nested", loaded=PRELOADED[0])
    foreign = admin(server, "load", {"lora_name": "x", "lora_path": str(models["foreign"])})  # shapes do not fit
    assert foreign.status_code == 400  # as vLLM answers a failed add_lora
    assert error_of(foreign, "nested")["type"] == "BadRequestError"
    assert "size mismatch" in error_of(foreign, "nested")["message"]
    assert list(listed(server)) == [BASE_NAME, *PRELOADED]  # nothing failed halfway


def test_admin_errors_flat_and_a_full_max_loras_evicts_the_least_recently_used(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """As in vLLM, loading past --max-loras evicts the least recently used adapter's weights rather than refusing:
    it stays listed, and a request for it reads them again from its path."""
    args = ["--error-format", "flat", "--max-loras", "1"]
    with running_server(models["base"], tmp_path, args=args) as flat:
        base_answer = answer(flat, str(models["base"]), QUESTIONS["en"])
        # A failed first load (no PEFT model yet) leaves no layers of the adapter behind in the base.
        assert admin(flat, "load", {"lora_name": "bad", "lora_path": str(models["foreign"])}).status_code == 400
        assert answer(flat, str(models["base"]), QUESTIONS["en"]) == base_answer
        assert admin(flat, "load", {"lora_name": "one", "lora_path": str(models["shop"])}).status_code == 200
        check_admin_errors(flat, models, "flat", loaded="one")
        one_answer = answer(flat, "one", QUESTIONS["en"])

        assert admin(flat, "load", {"lora_name": "two", "lora_path": str(models["travel"])}).status_code == 200
        assert list(listed(flat)) == [str(models["base"]), "one", "two"]  # "one" evicted, still listed
        assert (stats(flat)["loaded_adapters"], stats(flat)["resident_adapters"]) == (2, 1)
        two_answer = answer(flat, "two", QUESTIONS["en"])
        assert len({base_answer, one_answer, two_answer}) == 3
        assert answer(flat, "one", QUESTIONS["en"]) == one_answer  # read again from its path, evicting "two"
        assert answer(flat, "two", QUESTIONS["en"]) == two_answer
        assert stats(flat)["adapter_reloads"] == 2
        assert answer(flat, str(models["base"]), QUESTIONS["en"]) == base_answer  # named as vLLM does: --model
        assert admin(flat, "unload", {"lora_name": "one"}).status_code == 200  # evicted or not, it unloads
        with pytest.raises(openai.NotFoundError, match="does not exist"):  # the openai client reads flat bodies too
            chat(flat, "one", QUESTIONS["en"])

        # An evicted adapter whose files went away: a 500 that tells the caller nothing of paths or exceptions.
        gone = shutil.copytree(models["bank"], tmp_path / "gone")
        assert admin(flat, "load", {"lora_name": "gone", "lora_path": str(gone)}).status_code == 200
        answer(flat, "two", QUESTIONS["en"])  # evicts "gone"
        shutil.rmtree(gone)
        failed = httpx.post(
            f"{flat.base_url}/chat/completions",
            json={"model": "gone", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers=flat.headers,
            timeout=60,
        )
        assert failed.status_code == 500
        assert error_of(failed, "flat")["message"] == "Loading the adapter failed; see the log."
        assert str(gone) in flat.log.read_text()  # the cause is kept where the operator looks
        assert answer(flat, "two", QUESTIONS["en"]) == two_answer


RUN = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 120}


def test_cli_errors_are_plain_messages(models: dict[str, Path]) -> None:
    command = [sys.executable, "-m", "bot.cli", "serve"]
    missing = subprocess.run(command, **RUN)
    assert missing.returncode == 2
    assert "--model is required" in missing.stderr
    no_key = {**os.environ, "TUNELOOP_API_KEYS": ""}
    keyless = subprocess.run([*command, "--model", str(models["base"])], env=no_key, **RUN)
    assert keyless.returncode == 2
    assert "no API key: pass --api-key KEY or set TUNELOOP_API_KEYS" in keyless.stderr
    bad_adapter = [*command, "--model", str(models["base"]), "--lora-modules", f"x={models['base']}/nowhere"]
    failed = subprocess.run(bad_adapter, env={**no_key, "TUNELOOP_API_KEYS": "k"}, **RUN)
    assert failed.returncode == 2
    assert "No adapter found" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout + keyless.stderr + keyless.stdout


# What the server refuses


def test_without_the_key_nothing_is_loaded_listed_or_answered(server: ServeProcess, models: dict[str, Path]) -> None:
    """The attack of issue 15: load your own weights under the name the next deployment will use. Refused without
    the key (vLLM's 401 body), and with a wrong one; /health stays open, as in vLLM, for probes."""
    body = {"lora_name": "shop-v2", "lora_path": str(models["other"])}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.api_key}):
        for path, payload in [("load_lora_adapter", body), ("unload_lora_adapter", {"lora_name": "shop"})]:
            refused = httpx.post(f"{server.base_url}/{path}", json=payload, headers=headers, timeout=30)
            assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
        assert httpx.get(f"{server.base_url}/models", headers=headers).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert list(listed(server)) == [BASE_NAME, *PRELOADED]
    assert [httpx.get(f"{server.url}{path}").status_code for path in ("/docs", "/openapi.json")] == [404, 404]


def test_a_seed_out_of_range_is_a_400_and_the_server_keeps_answering(server: ServeProcess) -> None:
    # torch cannot seed with it: it used to raise on the generation thread, which died, and every request hung.
    with pytest.raises(openai.BadRequestError, match="seed"):
        chat(server, BASE_NAME, QUESTIONS["en"], temperature=1.0, seed=2**70)
    assert answer(server, BASE_NAME, QUESTIONS["en"])


def test_health_answers_while_a_huge_prompt_is_tokenized_and_bodies_over_the_cap_are_413(
    server: ServeProcess,
) -> None:
    """Templating and tokenization run off the event loop: /health answers while a prompt of a few MB is being
    tokenized (which takes seconds), and a body over the cap is refused before it is read."""
    huge = {"model": BASE_NAME, "messages": [{"role": "user", "content": "你好 hello world " * 80_000}]}
    done: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: done.append(
            httpx.post(f"{server.base_url}/chat/completions", json=huge, headers=server.headers, timeout=300)
        )
    )
    sender.start()
    try:
        time.sleep(0.5)  # the upload is done in milliseconds; tokenizing it takes seconds
        health = httpx.get(f"{server.url}/health", timeout=300)
        answered_first = sender.is_alive()
    finally:
        sender.join()
    assert health.status_code == 200
    assert answered_first, "/health waited for the huge prompt"
    refusal = done[0].json()["error"]["message"]  # too long for the context, or (a busy machine) too slow to tokenize
    assert done[0].status_code == 400
    assert "maximum context length" in refusal or "could not be prepared within" in refusal

    over = httpx.post(
        f"{server.base_url}/chat/completions",
        content=b" " * (DEFAULT_MAX_REQUEST_BYTES + 1),
        headers={**server.headers, "Content-Type": "application/json"},
        timeout=60,
    )
    assert (over.status_code, over.text) == (413, "Content Too Large")  # Starlette's, before the body is read


# OpenAI endpoints


def test_unknown_model_and_bad_requests(server: ServeProcess) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        chat(server, "nope", QUESTIONS["en"])
    assert not_found.value.status_code == 404
    assert "The model `nope` does not exist." in str(not_found.value)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        chat(server, BASE_NAME, QUESTIONS["en"], n=2)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096"):
        chat(server, BASE_NAME, QUESTIONS["en"], max_tokens=5000)
    body = {"model": BASE_NAME, "messages": []}
    empty = httpx.post(f"{server.base_url}/chat/completions", json=body, headers=server.headers)
    assert empty.status_code == 400
    assert empty.json()["error"]["type"] == "BadRequestError"


def test_streaming_chat_matches_non_streaming_and_keeps_chinese(server: ServeProcess) -> None:
    for model, question in [("shop", QUESTIONS["zh"]), (BASE_NAME, QUESTIONS["mixed"])]:
        whole = chat(server, model, question)
        stream = client(server).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(deltas) == whole.choices[0].message.content
        ends = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert ends == [whole.choices[0].finish_reason]
        assert chunks[-1].usage == whole.usage
        assert any("\u4e00" <= ch <= "\u9fff" for ch in whole.choices[0].message.content)  # Chinese, decoded
        assert IM_END not in whole.choices[0].message.content


def test_stop_strings_end_the_answer(server: ServeProcess) -> None:
    full = answer(server, "travel", QUESTIONS["zh"])
    stop = full[3:5]
    cut = chat(server, "travel", QUESTIONS["zh"], stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client(server).chat.completions.create(
        model="travel",
        messages=[{"role": "user", "content": QUESTIONS["zh"]}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stop=stop,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[: full.index(stop)]


def test_completions_endpoint(server: ServeProcess) -> None:
    openai_client = client(server)
    prompt = "顾客：我的快递到哪了？\n客服："
    whole = openai_client.completions.create(model="bank", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert whole.object == "text_completion"
    choice = whole.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == MAX_TOKENS and whole.usage.prompt_tokens > 0
    stream = openai_client.completions.create(
        model="bank", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == choice.text
    base = openai_client.completions.create(model=BASE_NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert base.choices[0].text != choice.text


def test_adapter_generation_config_stop_token_ends_and_is_not_shown(
    server: ServeProcess, models: dict[str, Path], tmp_path: Path
) -> None:
    """An adapter whose generation_config.json names, as EOS, a token its own answer reaches: the answer ends
    right before it (finish "stop"), the stop token counted in usage but never in the text."""
    tokenizer = AutoTokenizer.from_pretrained(models["shop"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models["base"]), models["shop"])
    messages = [{"role": "user", "content": QUESTIONS["en"]}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    stop_id = ids[4]
    kept = ids[: ids.index(stop_id)]
    stopper = shutil.copytree(models["shop"], tmp_path / "stopper")
    config = json.loads((stopper / "generation_config.json").read_text())
    (stopper / "generation_config.json").write_text(json.dumps(config | {"eos_token_id": [stop_id]}))
    assert admin(server, "load", {"lora_name": "stopper", "lora_path": str(stopper)}).status_code == 200
    try:
        reply = chat(server, "stopper", QUESTIONS["en"])
    finally:
        admin(server, "unload", {"lora_name": "stopper"})
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == tokenizer.decode(kept, skip_special_tokens=True)
    assert reply.usage.completion_tokens == len(kept) + 1


# Batching


def test_concurrent_requests_to_adapters_and_base_batch_and_match_one_at_a_time(server: ServeProcess) -> None:
    requests = [(BASE_NAME, QUESTIONS["zh"]), ("shop", QUESTIONS["en"]), ("travel", QUESTIONS["long"])]
    requests += [("bank", QUESTIONS["mixed"]), ("shop", QUESTIONS["zh"]), (BASE_NAME, QUESTIONS["long"])]
    alone = [answer(server, model, question) for model, question in requests]
    assert len(set(alone)) == len(alone)  # the adapters and the base each answer differently

    async def all_at_once() -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        replies = await asyncio.gather(
            *(
                async_client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": q}], max_tokens=MAX_TOKENS, temperature=0
                )
                for model, q in requests
            )
        )
        return [reply.choices[0].message.content for reply in replies]

    before = stats(server)
    together = asyncio.run(all_at_once())
    after = stats(server)
    assert together == alone
    assert after["requests"] - before["requests"] == len(requests)
    assert after["batches"] - before["batches"] < len(requests)
    assert after["largest_batch"] > 1
    assert "request(s) in one generate call" in server.log.read_text()


def test_seeded_sampling_repeats_whatever_runs_beside_it(server: ServeProcess) -> None:
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 1234}

    async def beside_greedy() -> str:
        async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        messages = [{"role": "user", "content": QUESTIONS["en"]}]
        seeded, _ = await asyncio.gather(
            async_client.chat.completions.create(model="bank", messages=messages, max_tokens=MAX_TOKENS, **sampled),
            async_client.chat.completions.create(model="bank", messages=messages, max_tokens=MAX_TOKENS, temperature=0),
        )
        return seeded.choices[0].message.content

    first = answer(server, "bank", QUESTIONS["en"], **sampled)
    assert asyncio.run(beside_greedy()) == first
    assert answer(server, "bank", QUESTIONS["en"], **(sampled | {"seed": 99})) != first


# The streaming decoder, on its own


def byte_tokens(tokenizer, text: str) -> list[int]:
    """`text` as one byte-level token per UTF-8 byte: every Chinese character split across three tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    return tokenizer.convert_tokens_to_ids([alphabet[b] for b in text.encode("utf-8")])


def stream_text(tokenizer, ids: list[int], stop_strings: tuple[str, ...] = (), max_new_tokens: int = 100) -> list:
    loop = asyncio.new_event_loop()
    try:
        entry = ModelEntry("m", Path("."), tokenizer, frozenset({tokenizer.convert_tokens_to_ids(IM_END)}), False)
        job = GenerationJob([1], entry, max_new_tokens, Sampling(0.0), stop_strings, loop)
        row = AnswerStream(job)
        for token_id in ids:
            row.push(token_id)
        loop.run_until_complete(asyncio.sleep(0))  # deliver what the "worker" emitted
        events = []
        while not job.events.empty():
            events.append(job.events.get_nowait())
        return events
    finally:
        loop.close()


def test_streamed_text_never_splits_a_character_and_holds_back_stop_strings(models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    text = "退货请在7天内，thanks！"
    end = tokenizer.convert_tokens_to_ids(IM_END)
    events = stream_text(tokenizer, [*byte_tokens(tokenizer, text), end])
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == text
    assert len(deltas) == len(text)  # one whole character at a time
    assert events[-1] == Finished("stop", None, len(text.encode("utf-8")) + 1)

    events = stream_text(tokenizer, byte_tokens(tokenizer, text), stop_strings=("7天内",))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == "退货请在"  # "7" was held back until it proved the start of the stop string
    assert events[-1].reason == "stop" and events[-1].stop_reason == "7天内"

    events = stream_text(tokenizer, byte_tokens(tokenizer, text), max_new_tokens=7)  # 退货 and one byte of 请
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "退货\ufffd"
    assert events[-1].reason == "length"


def test_a_chat_template_that_loops_is_cut_off_and_holds_its_slot_until_it_ends(models: dict[str, Path]) -> None:
    """Templating runs in the renderer's threads, each answered within its time limit: a template that loops
    gets a 400 in time, and, since a thread cannot be stopped, its slot stays taken until it really ends, so a
    flood of such requests cannot start ever more threads."""
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    tokenizer.chat_template = (
        "{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
    )
    entry = ModelEntry("looping", models["base"], tokenizer, frozenset(), False)
    renderer = Renderer(threads=1, timeout_s=0.2)
    messages = [{"role": "user", "content": "hi"}]

    async def twice() -> tuple[list[BaseException | None], int]:
        outcomes = []
        for _ in range(2):
            try:
                await renderer.run(lambda: chat_prompt_ids(entry, messages))
                outcomes.append(None)
            except BadRequestError as error:
                outcomes.append(error)
        busy_threads = sum(thread.name == "tuneloop-render" for thread in threading.enumerate())
        return outcomes, busy_threads

    outcomes, busy_threads = asyncio.run(twice())
    assert all(isinstance(outcome, BadRequestError) for outcome in outcomes)
    assert "could not be prepared within 0.2 s" in outcomes[0].message
    assert busy_threads == 1  # the second request waited for the one slot instead of starting a thread
