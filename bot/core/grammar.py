"""One command grammar for chat text, the same in Slack, Telegram and `tuneloop chat`:

    help [command]                      new <project> [model=…] [template=…] [lang=en|zh]
    <project> [data=<version>] [options]          <project> synth "<task>" [n=500] [options]
    status [run]     list [project]     history <run>     cancel <run>     retry <run>
    review <run>     review <run> keep|drop <sample> [comment]     review <run> fix <sample> <answer>
    summary <run>    retrain <run> [dpo] request <run>     approve <run> [override=<reason>]
    deploy <run>     rollback <project> project <project> [reviewers=… approvers=… requesters=… channels=… lang=…]
    deployments [project]     sync <project>     lang en|zh

Options are the recipe's keys (LLaMA-Factory's names) plus short aliases. A mistake is a UserError in the person's
language with the usage line and the closest valid word. The dataset selector and weighted lists (`退货:3,换货:2`)
are parsed here too, for every face.
"""

import difflib
import re
import shlex
from typing import Any

from bot.core.actions import (
    Action,
    Approve,
    Cancel,
    ConfigureProject,
    Help,
    ListDeployments,
    ListRuns,
    NewProject,
    RequestApproval,
    Retrain,
    Retry,
    Review,
    Rollback,
    SetLanguage,
    ShowHistory,
    ShowProject,
    ShowReport,
    ShowReview,
    ShowReviewSummary,
    StartRun,
    Status,
    SyncServers,
)
from bot.core.catalogue import LANGUAGES, say
from bot.core.errors import UserError
from engine.data.versions import DEFAULT_DATASET
from engine.train.recipe import Recipe

# command -> (usage, what it does in English, in Chinese)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "help": ("help [command]", "this list, or one command's usage", "命令列表，或某个命令的用法"),
    "new": ("new <project> [model=…] [template=…] [lang=en|zh]", "create a project", "创建项目"),
    "project": (
        "project <project> [reviewers=… approvers=… requesters=… channels=… lang=… four_eyes=yes|no]",
        "show or change a project's settings and people",
        "查看或修改项目设置与成员",
    ),
    "status": ("status [run]", "a run's state, or the runs still going", "运行状态，或所有进行中的运行"),
    "list": ("list [project] [state=…]", "the runs, newest first", "运行列表（最新在前）"),
    "history": ("history <run>", "a run's whole story", "运行的完整经过"),
    "report": ("report <run>", "a run's evaluation: gate, scores, charts", "运行的评估报告：门槛、得分、图表"),
    "cancel": ("cancel <run>", "stop a run", "取消运行"),
    "retry": ("retry <run>", "retry a failed run from the stage that failed", "从失败的阶段重试运行"),
    "review": (
        "review <run> [keep|drop <sample> [comment] | fix <sample> <answer>]",
        "the weakest samples, or a verdict on one",
        "查看得分最低的样本，或审核其中一个",
    ),
    "summary": ("summary <run>", "what the reviews change", "审核汇总及其改动"),
    "retrain": (
        "retrain <run> [dpo]",
        "start the next iteration from the reviews (dpo: SFT + DPO on the review pairs)",
        "根据审核开始下一轮训练（dpo：SFT 之后用审核得到的偏好数据做 DPO）",
    ),
    "request": ("request <run>", "send a reviewed run for approval", "提交审批"),
    "approve": ("approve <run> [override=<reason>]", "approve and deploy a run", "批准并部署运行"),
    "deploy": ("deploy <run>", "approve and deploy a run", "批准并部署运行"),
    "rollback": ("rollback <project>", "serve the previous version again", "回滚到上一个版本"),
    "deployments": ("deployments [project]", "what was deployed, newest first", "部署列表（最新在前）"),
    "sync": (
        "sync <project>",
        "load the project's versions back onto model servers that lost them",
        "把项目的版本重新加载到丢失它们的模型服务器上",
    ),
    "lang": ("lang en|zh", "answer me in English or Chinese", "设置回复语言"),
}
START_USAGE = '<project> [data=<version>] [filter] [split] [options]   |   <project> synth "<task>" [n=500] [options]'
# Short names for the recipe keys people change most.
ALIASES = {
    "epochs": "num_train_epochs",
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lr": "learning_rate",
    "batch": "per_device_train_batch_size",
    "cutoff": "cutoff_len",
    "model": "model_name_or_path",
}
RUN_KEYS = ("data", "filter", "split", "test_size", "n")
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "「": '"', "」": '"'})
_TRUE, _FALSE = {"yes", "true", "on", "1", "是"}, {"no", "false", "off", "0", "否"}


def parse(text: str, language: str = "en", projects: list[str] | None = None) -> Action:
    """The action `text` asks for. `projects` are the known project names (a word that is neither a command nor
    one of them is a mistake, answered with the closest); None accepts any word as a project."""
    words = _split(text, language)
    if not words:
        raise UserError(say(language, "grammar.empty"))
    head, rest = words[0], words[1:]
    command = head.lower().lstrip("/")
    if command in COMMANDS:
        return _COMMAND_PARSERS[command](rest, language)
    if projects is not None and head not in projects:
        close = difflib.get_close_matches(head, [*COMMANDS, *projects], n=1, cutoff=0.5)
        hint = " " + say(language, "grammar.did_you_mean", suggestion=close[0]) if close else ""
        usage = say(language, "grammar.usage", usage="help")
        raise UserError(f"{say(language, 'grammar.unknown', word=head)}{hint} {usage}")
    return _start_run(head, rest, language)


def usage(command: str, language: str = "en") -> str:
    return say(language, "grammar.usage", usage=COMMANDS[command][0] if command in COMMANDS else START_USAGE)


def parse_dataset(value: str, language: str = "en") -> tuple[str, int | None]:
    """A dataset selector: a version number (`3`), `latest`, or another dataset of the project (`faq`, `faq:3`)."""
    name, _, number = value.rpartition(":") if ":" in value else ("", "", value)
    if number == "latest":
        return name or DEFAULT_DATASET, None
    if number.isdigit():
        return name or DEFAULT_DATASET, int(number)
    if not name and value and re.fullmatch(r"[\w\-.]+", value):
        return value, None
    raise UserError(say(language, "grammar.dataset", value=value))


def parse_weights(text: str, language: str = "en") -> dict[str, float]:
    """ "退货:3,换货:2,物流:5" (also with ，：; or without weights, meaning equal shares)."""
    weights: dict[str, float] = {}
    for part in re.split(r"[,，;；\n]", text):
        if not part.strip():
            continue
        match = re.fullmatch(r"\s*(.+?)\s*(?:[:：=]\s*(\S*))?\s*", part)
        assert match is not None
        name, weight = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(say(language, "grammar.weight_number", part=part.strip())) from None
        if not name or value <= 0:
            raise UserError(say(language, "grammar.weights", part=part.strip()))
        weights[name] = weights.get(name, 0.0) + value
    if not weights:
        raise UserError(say(language, "grammar.weights", part=text.strip()))
    return weights


def parse_names(text: str) -> list[str]:
    """A list of people or channels: `a,b c`; `-` or `none` clears it."""
    names = [name for name in re.split(r"[,，\s]+", text.strip()) if name]
    return [] if names in (["-"], ["none"]) else names


# --- the commands ---------------------------------------------------------------------------------------------


def _split(text: str, language: str) -> list[str]:
    try:
        return shlex.split(text.translate(_QUOTES))
    except ValueError as error:
        raise UserError(say(language, "grammar.quotes", detail=str(error).lower())) from None


def _number(value: str | None, what: str, command: str, language: str) -> int:
    if value is None:
        raise UserError(usage(command, language))
    cleaned = value.lstrip("#")
    if not cleaned.isdigit():
        noun = say(language, f"word.{what}")
        raise UserError(f"{say(language, 'grammar.number', value=value, what=noun)} {usage(command, language)}")
    return int(cleaned)


def _no_more(rest: list[str], command: str, language: str) -> None:
    if rest:
        raise UserError(f"{say(language, 'grammar.extra', word=rest[0])} {usage(command, language)}")


def _options(words: list[str], allowed: tuple[str, ...], command: str, language: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in words:
        key, equals, value = word.partition("=")
        key = key.strip().lower()
        if not equals or not value:
            raise UserError(f"{say(language, 'grammar.option_value', key=key)} {usage(command, language)}")
        if key not in allowed:
            raise UserError(_unknown_option(key, allowed, command, language))
        options[key] = value
    return options


def _unknown_option(key: str, allowed: tuple[str, ...] | list[str], command: str, language: str) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    hint = " " + say(language, "grammar.did_you_mean", suggestion=close[0]) if close else ""
    return f"{say(language, 'grammar.option', key=key)}{hint} {usage(command, language)}"


def _help(rest: list[str], language: str) -> Action:
    _no_more(rest[1:], "help", language)
    return Help(topic=rest[0].lower().lstrip("/") if rest else None)


def _new(rest: list[str], language: str) -> Action:
    if not rest:
        raise UserError(usage("new", language))
    options = _options(rest[1:], ("model", "template", "lang"), "new", language)
    if "lang" in options:
        _check_language(options["lang"], language)
    return NewProject(
        project=rest[0], base_model=options.get("model"), template=options.get("template"), language=options.get("lang")
    )


def _project(rest: list[str], language: str) -> Action:
    if not rest:
        raise UserError(usage("project", language))
    if len(rest) == 1:
        return ShowProject(project=rest[0])
    keys = ("reviewers", "approvers", "requesters", "channels", "lang", "model", "template", "four_eyes")
    options = _options(rest[1:], keys, "project", language)
    people = {
        key: parse_names(options[key]) for key in ("reviewers", "approvers", "requesters", "channels") if key in options
    }
    if "lang" in options:
        _check_language(options["lang"], language)
    four_eyes = _boolean(options["four_eyes"], "four_eyes", language) if "four_eyes" in options else None
    return ConfigureProject(
        project=rest[0],
        base_model=options.get("model"),
        template=options.get("template"),
        language=options.get("lang"),
        four_eyes=four_eyes,
        **people,
    )


def _status(rest: list[str], language: str) -> Action:
    _no_more(rest[1:], "status", language)
    return Status(run=_number(rest[0], "run", "status", language) if rest else None)


def _list(rest: list[str], language: str) -> Action:
    positional = [word for word in rest if "=" not in word]
    _no_more(positional[1:], "list", language)
    options = _options([word for word in rest if "=" in word], ("state",), "list", language)
    return ListRuns(project=positional[0] if positional else None, state=options.get("state"))


def _run_only(command: str, action: type) -> Any:
    def parse_run(rest: list[str], language: str) -> Action:
        run = _number(rest[0] if rest else None, "run", command, language)
        _no_more(rest[1:], command, language)
        return action(run=run)

    return parse_run


def _retrain(rest: list[str], language: str) -> Action:
    run = _number(rest[0] if rest else None, "run", "retrain", language)
    dpo = len(rest) > 1 and rest[1].lower() == "dpo"
    _no_more(rest[1 + dpo :], "retrain", language)
    return Retrain(run=run, dpo=dpo)


def _review(rest: list[str], language: str) -> Action:
    run = _number(rest[0] if rest else None, "run", "review", language)
    if len(rest) == 1:
        return ShowReview(run=run)
    verdict = rest[1].lower()
    verdicts = {"keep": "keep", "fix": "fix", "drop": "drop", "保留": "keep", "修正": "fix", "删除": "drop"}
    if verdict not in verdicts:
        close = difflib.get_close_matches(verdict, ["keep", "fix", "drop"], n=1, cutoff=0.5)
        hint = " " + say(language, "grammar.did_you_mean", suggestion=close[0]) if close else ""
        raise UserError(f"{say(language, 'grammar.extra', word=rest[1])}{hint} {usage('review', language)}")
    sample = _number(rest[2] if len(rest) > 2 else None, "sample", "review", language)
    text = " ".join(rest[3:]).strip() or None
    if verdicts[verdict] == "fix":
        if text is None:
            raise UserError(say(language, "review.fix_needs_answer", run=run, id=sample))
        return Review(run=run, judgement=sample, verdict="fix", answer=text)
    return Review(run=run, judgement=sample, verdict=verdicts[verdict], comment=text)


def _approve(rest: list[str], language: str) -> Action:
    run = _number(rest[0] if rest else None, "run", "approve", language)
    options = _options(rest[1:], ("override",), "approve", language)
    return Approve(run=run, override=options.get("override"))


def _rollback(rest: list[str], language: str) -> Action:
    if not rest:
        raise UserError(usage("rollback", language))
    _no_more(rest[1:], "rollback", language)
    return Rollback(project=rest[0])


def _deployments(rest: list[str], language: str) -> Action:
    _no_more(rest[1:], "deployments", language)
    return ListDeployments(project=rest[0] if rest else None)


def _sync(rest: list[str], language: str) -> Action:
    if not rest:
        raise UserError(usage("sync", language))
    _no_more(rest[1:], "sync", language)
    return SyncServers(project=rest[0])


def _lang(rest: list[str], language: str) -> Action:
    if len(rest) != 1:
        raise UserError(usage("lang", language))
    return SetLanguage(language=_check_language(rest[0], language))


def _check_language(value: str, language: str) -> str:
    if value.lower() not in LANGUAGES:
        raise UserError(say(language, "grammar.language", value=value))
    return value.lower()


def _boolean(value: str, key: str, language: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UserError(say(language, "grammar.bad_value", value=value, key=key, detail="yes / no"))


def _start_run(project: str, words: list[str], language: str) -> Action:
    task = None
    if words and words[0].lower() == "synth":
        if len(words) < 2 or "=" in words[1]:
            raise UserError(usage("<project>", language))
        task, words = words[1], words[2:]
    recipe_keys = tuple(Recipe.model_fields)
    allowed = (*RUN_KEYS, *ALIASES, *recipe_keys)
    flags = {word.lower() for word in words if "=" not in word}
    for flag in flags - {"filter", "split"}:
        raise UserError(_unknown_option(flag, allowed, "<project>", language))
    options = _options([word for word in words if "=" in word], allowed, "<project>", language)
    recipe = {ALIASES.get(key, key): _typed(value) for key, value in options.items() if key not in RUN_KEYS}
    data = options.get("data", "latest")
    parse_dataset(data, language)
    n = options.get("n")
    if n is not None and (task is None or not n.isdigit() or int(n) < 1):
        raise UserError(say(language, "grammar.bad_value", value=n, key="n", detail=START_USAGE))
    test_size = options.get("test_size")
    try:
        size = float(test_size) if test_size is not None else 0.1
    except ValueError:
        raise UserError(
            say(language, "grammar.bad_value", value=test_size, key="test_size", detail="0.1 / 50")
        ) from None
    synthesizing = task is not None
    return StartRun(
        project=project,
        data=data,
        options=recipe,
        task=task,
        synthesize=int(n) if n else (500 if synthesizing else None),
        filter="filter" in flags or synthesizing,
        split="split" in flags or synthesizing or test_size is not None,
        test_size=size,
    )


def _typed(value: str) -> Any:
    """A recipe value as YAML would read it, but with `1e-4` a number (YAML 1.1 reads it as text)."""
    if value.lower() in _TRUE - {"1", "是"}:
        return True
    if value.lower() in _FALSE - {"0", "否"}:
        return False
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


_COMMAND_PARSERS = {
    "help": _help,
    "new": _new,
    "project": _project,
    "status": _status,
    "list": _list,
    "history": _run_only("history", ShowHistory),
    "report": _run_only("report", ShowReport),
    "cancel": _run_only("cancel", Cancel),
    "retry": _run_only("retry", Retry),
    "review": _review,
    "summary": _run_only("summary", ShowReviewSummary),
    "retrain": _retrain,
    "request": _run_only("request", RequestApproval),
    "approve": _approve,
    "deploy": _run_only("deploy", Approve),
    "rollback": _rollback,
    "deployments": _deployments,
    "sync": _sync,
    "lang": _lang,
}


def spell(action: Action) -> str:
    """The chat text that asks for `action`: what a button does, typed (`parse(spell(a)) == a` where text says it)."""
    match action:
        case Review(verdict="fix"):
            return (
                f"review {action.run} fix {action.judgement} <answer>"
                if not action.answer
                else (f"review {action.run} fix {action.judgement} {shlex.quote(action.answer)}")
            )
        case Review():
            return f"review {action.run} {action.verdict} {action.judgement}"
        case ShowReview():
            return f"review {action.run}"
        case ShowReviewSummary():
            return f"summary {action.run}"
        case Approve(override=None):
            return f"approve {action.run}"
        case Approve():
            return f"approve {action.run} override={shlex.quote(action.override or '')}"
        case Rollback():
            return f"rollback {action.project}"
        case ListDeployments():
            return "deployments" + (f" {action.project}" if action.project else "")
        case SyncServers(servers=None) if action.project:
            return f"sync {action.project}"
        case RequestApproval():
            return f"request {action.run}"
        case Status(run=None):
            return "status"
        case StartRun():  # a run on a dataset version, as typed (its options are the person's to add)
            return action.project + (f" data={action.data}" if action.data != "latest" else "")
        case Retrain(dpo=True):
            return f"retrain {action.run} dpo"
        case ShowHistory() | ShowReport() | Cancel() | Retry() | Retrain() | Status():
            return f"{_VERBS[type(action)]} {action.run}"
        case _:
            return action.kind


_VERBS: dict[type, str] = {
    ShowReport: "report",
    ShowHistory: "history",
    Cancel: "cancel",
    Retry: "retry",
    Retrain: "retrain",
    Status: "status",
}
