"""Every sentence the core says, in English and Chinese. The language is chosen per person (`lang en|zh`), else
per project, else English. Sentences from the engine (why a run may not move, what is wrong with a file) are
English and are shown as they are."""

import string

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"

# key -> (English, Chinese); both take the same {placeholders}
CATALOGUE: dict[str, tuple[str, str]] = {
    # help
    "help.title": ("tuneloop: the fine-tuning loop in one conversation", "tuneloop：一场对话完成微调闭环"),
    "help.footer": (
        "Options are recipe keys (LLaMA-Factory's names) or epochs, rank, alpha, lr, batch, cutoff, steps.",
        "选项为训练配方的键（与 LLaMA-Factory 同名），或简写 epochs、rank、alpha、lr、batch、cutoff、steps。",
    ),
    "help.unknown_topic": ("There is no command '{topic}'.", "没有命令 '{topic}'。"),
    # grammar
    "grammar.empty": ("Say what to do: try 'help'.", "请输入要做的事，例如 'help'。"),
    "grammar.unknown": ("'{word}' is neither a command nor a project.", "'{word}' 既不是命令也不是项目。"),
    "grammar.did_you_mean": ("Did you mean '{suggestion}'?", "你是不是想输入 '{suggestion}'？"),
    "grammar.usage": ("Usage: {usage}", "用法：{usage}"),
    "grammar.quotes": ("A quote is not closed: {detail}.", "引号没有闭合：{detail}。"),
    "grammar.number": ("'{value}' is not a {what} number.", "'{value}' 不是有效的{what}编号。"),
    "grammar.option": ("Unknown option '{key}'.", "未知选项 '{key}'。"),
    "grammar.option_value": ("Option '{key}' needs a value: {key}=VALUE.", "选项 '{key}' 需要取值：{key}=值。"),
    "grammar.extra": ("'{word}' is not expected here.", "这里不需要 '{word}'。"),
    "grammar.bad_value": ("'{value}' is not a valid {key}: {detail}.", "'{value}' 不是有效的 {key}：{detail}。"),
    "grammar.dataset": (
        "'{value}' is not a dataset: use a version number, latest, NAME or NAME:N.",
        "'{value}' 不是有效的数据集：请用版本号、latest、名称或 名称:版本号。",
    ),
    "grammar.weights": (
        "'{part}' needs a name and a positive weight, e.g. 退货:3.",
        "'{part}' 需要名称和正数权重，例如 退货:3。",
    ),
    "grammar.weight_number": (
        "'{part}' needs a number after the colon, e.g. 退货:3.",
        "'{part}' 的冒号后需要数字，例如 退货:3。",
    ),
    "grammar.language": ("Languages: en or zh, not '{value}'.", "语言只能是 en 或 zh，不是 '{value}'。"),
    # words
    "word.run": ("run", "运行"),
    "word.sample": ("sample", "样本"),
    "word.anyone": ("anyone", "任何人"),
    "word.none": ("none", "无"),
    "word.yes": ("yes", "是"),
    "word.no": ("no", "否"),
    # projects
    "project.created": ("Project {project} created.", "已创建项目 {project}。"),
    "project.exists": ("Project {project} already exists.", "项目 {project} 已存在。"),
    "project.updated": ("Project {project} updated.", "项目 {project} 已更新。"),
    "project.title": ("Project {project}", "项目 {project}"),
    "project.base_model": ("base model", "基座模型"),
    "project.template": ("chat template", "对话模板"),
    "project.reviewers": ("reviewers", "审核人"),
    "project.approvers": ("approvers", "审批人"),
    "project.requesters": ("who may start runs", "可发起运行的人"),
    "project.channels": ("channels", "频道"),
    "project.language": ("language", "语言"),
    "project.four_eyes": ("requester may not approve", "发起人不能审批自己的运行"),
    "project.no_base_model": (
        "Project {project} has no base model yet: set one with 'new {project} model=PATH'.",
        "项目 {project} 还没有基座模型：请用 'new {project} model=路径' 设置。",
    ),
    # runs
    "run.queued": ("Run {run} of {project} queued for {stage}.", "{project} 的运行 {run} 已排队，等待{stage}。"),
    "run.imported": (
        "{file}: {added} new samples, {present} already present; {project}/{dataset} v{version}.",
        "{file}：新增 {added} 个样本，{present} 个已存在；{project}/{dataset} 第 {version} 版。",
    ),
    "import.rejected": (
        "{n} records were refused and left out; each with its reason in {file}:",
        "{n} 条记录未通过校验，已跳过；原因逐条见 {file}：",
    ),
    "import.nothing_new": (
        "{file}: nothing new; {project}/{dataset} v{version} already holds every sample.",
        "{file}：没有新内容；{project}/{dataset} 第 {version} 版已包含全部样本。",
    ),
    "import.read": (
        "Read {records} records ({format}, {encoding}): {valid} valid, {refused} refused.",
        "读取 {records} 条记录（{format}，{encoding}）：{valid} 条有效，{refused} 条未通过。",
    ),
    "import.warning": ("Warning: {warning}", "注意：{warning}"),
    "import.more_problems": ("… and {n} more.", "……另有 {n} 条。"),
    "import.next": ("Train on it: {command}", "用它训练：{command}"),
    "import.whose": ("There is no file to import.", "没有可导入的文件。"),
    "run.recipe_note": ("Recipe {recipe}: {note}.", "配方 {recipe}：{note}。"),
    "run.title": ("Run {run}: {project}, iteration {iteration}", "运行 {run}：{project}，第 {iteration} 轮"),
    "run.title_refused": (
        "Run {run}: {project}, refused at its start (no iteration)",
        "运行 {run}：{project}，启动时被拒绝（不计轮次）",
    ),
    "run.state": ("state", "状态"),
    "run.requested_by": ("requested by", "发起人"),
    "run.dataset": ("dataset version", "数据集版本"),
    "run.error": ("error", "错误"),
    "run.progress": ("progress", "进度"),
    "run.loss": ("last loss", "最新 loss"),
    "run.gate": ("gate", "门槛"),
    "run.continues": ("continues run", "延续运行"),
    "run.override": ("gate overridden", "已强制越过门槛"),
    "runs.title": ("Runs", "运行列表"),
    "runs.going": ("Runs still going", "进行中的运行"),
    "runs.none": ("No runs.", "没有运行。"),
    "runs.row": ("run {run} · {project} #{iteration} · {state}", "运行 {run} · {project} 第 {iteration} 轮 · {state}"),
    "runs.row_refused": (
        "run {run} · {project} · refused at its start · {state}",
        "运行 {run} · {project} · 启动时被拒绝 · {state}",
    ),
    "run.cancelled": ("Run {run} cancelled by {who}.", "运行 {run} 已被 {who} 取消。"),
    "run.retried": (
        "Run {run} retried by {who}, now {stage}; {job} queued.",
        "运行 {run} 已由 {who} 重试，当前{stage}；任务 {job} 已排队。",
    ),
    "run.retried_inline": (
        "Run {run} was not run by workers: retry it on the terminal with 'tuneloop train --resume {run}'.",
        "运行 {run} 不是由 worker 执行的：请在终端用 'tuneloop train --resume {run}' 重试。",
    ),
    "stage.preparation": ("preparation", "数据准备"),
    "stage.training": ("training", "训练"),
    "state.queued": ("queued", "排队中"),
    "state.preparing": ("preparing data", "准备数据"),
    "state.training": ("training", "训练中"),
    "state.evaluating": ("evaluating", "评估中"),
    "state.reviewing": ("waiting for review", "待审核"),
    "state.awaiting_approval": ("waiting for approval", "待审批"),
    "state.deploying": ("deploying", "部署中"),
    "state.deployed": ("deployed", "已部署"),
    "state.failed": ("failed", "失败"),
    "state.cancelled": ("cancelled", "已取消"),
    "state.done": ("trained", "已训练"),
    # history
    "history.move": ("{when} {origin} → {to} by {who}{where}", "{when} {origin} → {to}，操作人 {who}{where}"),
    "history.where": (" on {platform}", "（{platform}）"),
    "history.job": ("{job} {stage} {status} (attempt {attempt})", "{job} {stage} {status}（第 {attempt} 次）"),
    "history.jobs": ("jobs", "任务"),
    "history.evaluation": ("evaluation {id} ({judge} judge): gate {gate}", "评估 {id}（{judge} 评审）：门槛{gate}"),
    "history.reviews": ("reviews: {count} by {who} ({verdicts})", "审核：{who} 共 {count} 条（{verdicts}）"),
    "history.deployment": ("deployment {id}: {version} {status}", "部署 {id}：{version} {status}"),
    "history.events": ("events", "事件"),
    "gate.passed": ("passed", "通过"),
    "gate.failed": ("failed", "未通过"),
    "gate.undecided": ("undecided", "未判定"),
    # review
    "review.title": ("Run {run}: the {n} weakest samples to review", "运行 {run}：得分最低的 {n} 个样本，请审核"),
    "review.none": ("Run {run} has no judged samples to review.", "运行 {run} 没有可审核的评测样本。"),
    "review.card": ("Sample #{id} · score {score}", "样本 #{id} · 得分 {score}"),
    "review.question": ("question", "问题"),
    "review.reference": ("reference", "参考答案"),
    "review.answer": ("tuned model", "微调模型"),
    "review.base": ("base model", "基座模型"),
    "review.tags": ("sub-scenario", "子场景"),
    "review.reason": ("judge", "评审意见"),
    "review.latest": ("latest review", "最新审核"),
    "review.fix_prompt": ("Reply with the corrected answer for sample #{id}.", "请回复样本 #{id} 的正确答案。"),
    "review.recorded": ("{who} marked sample #{id}: {verdict}.", "{who} 已将样本 #{id} 标记为：{verdict}。"),
    "review.fix_needs_answer": (
        "A fix needs the corrected answer: review {run} fix {id} <answer>.",
        "修正需要给出正确答案：review {run} fix {id} <答案>。",
    ),
    "review.not_of_run": ("Sample #{id} was not judged in run {run}.", "样本 #{id} 不属于运行 {run} 的评测。"),
    "verdict.keep": ("keep", "保留"),
    "verdict.fix": ("fix", "修正"),
    "verdict.drop": ("drop", "删除"),
    "summary.title": ("Run {run}: review summary", "运行 {run}：审核汇总"),
    "summary.nothing": ("No samples of run {run} are reviewed yet.", "运行 {run} 还没有审核过的样本。"),
    "summary.counts": (
        "{reviewed} reviewed: {keep} kept, {fix} fixed, {drop} dropped.",
        "已审核 {reviewed} 个：保留 {keep}，修正 {fix}，删除 {drop}。",
    ),
    "summary.no_change": (
        "No review changes the data and no sub-scenario is weak: nothing to retrain on yet.",
        "审核没有改动数据，也没有薄弱的子场景：暂时无需重新训练。",
    ),
    "summary.change": ("Retrain would: {change}.", "重新训练将会：{change}。"),
    "change.fixed_answers": ("replace {n} training answers", "替换 {n} 条训练答案"),
    "change.fixed_answers.one": ("replace 1 training answer", "替换 1 条训练答案"),
    "change.better_references": ("improve {n} references", "改进 {n} 条参考答案"),
    "change.better_references.one": ("improve 1 reference", "改进 1 条参考答案"),
    "change.dropped": ("remove {n} samples", "删除 {n} 个样本"),
    "change.dropped.one": ("remove 1 sample", "删除 1 个样本"),
    "change.new_training_samples": ("add {n} fixed test samples to train", "把 {n} 个修正的测试样本加入训练集"),
    "change.new_training_samples.one": ("add 1 fixed test sample to train", "把 1 个修正的测试样本加入训练集"),
    "change.targeted": ("add {n} new samples for {tags}", "为 {tags} 新增 {n} 个样本"),
    "change.targeted.one": ("add 1 new sample for {tags}", "为 {tags} 新增 1 个样本"),
    "change.oversample": (
        "no synthesis endpoint: oversampling {factors} instead of new data",
        "未配置合成端点：改为对 {factors} 过采样，而非新增数据",
    ),
    "word.and": (" and ", "和"),
    "retrain.started": (
        "Iteration {iteration} started as run {run} on dataset version {version}: {change}.",
        "第 {iteration} 轮已开始（运行 {run}，数据集第 {version} 版）：{change}。",
    ),
    "retrain.dpo": (
        "It trains SFT, then DPO on {n} preference pairs from reviews.",
        "先做 SFT，再用审核得到的 {n} 对偏好数据做 DPO。",
    ),
    "summary.pairs": (
        "Reviews have given {n} preference pairs: Retrain can also train SFT + DPO on them.",
        "审核已得到 {n} 对偏好数据：重新训练时也可以在 SFT 之后用它们做 DPO。",
    ),
    "retrain.already": ("Run {run} already continues run {parent}.", "运行 {run} 已经延续了运行 {parent}。"),
    # approval
    "approval.requested": (
        "Run {run} is waiting for an approver ({approvers}).",
        "运行 {run} 等待审批（审批人：{approvers}）。",
    ),
    "approval.queued": (
        "Run {run} approved by {who}; deployment queued as job {job}.",
        "运行 {run} 已由 {who} 批准，部署任务 {job} 已排队。",
    ),
    "approval.deploying": ("Run {run} approved by {who}; deploying.", "运行 {run} 已由 {who} 批准，正在部署。"),
    "approval.override": ("Approved over its failed gate: {reason}", "越过未通过的门槛批准：{reason}"),
    "approval.override_prompt": (
        "Reply with the reason to deploy run {run} although it failed its gate.",
        "请回复：运行 {run} 未通过门槛，仍要部署的理由。",
    ),
    "approval.confirm": ("Deploy run {run} of {project} to production?", "确认将 {project} 的运行 {run} 部署上线？"),
    "deploy.done": ("{project} now serves {version} (run {run}).", "{project} 现在提供 {version}（运行 {run}）。"),
    "deploy.failed": ("Deploying run {run} failed: {error}", "运行 {run} 部署失败：{error}"),
    "deploy.unapproved": (
        "Run {run} deployed by {who} without approval: {reason}.",
        "运行 {run} 已由 {who} 未经审批部署：{reason}。",
    ),
    "deploy.answered": ("{server} answered the test prompt: {answer}", "{server} 对测试问题的回答：{answer}"),
    "deploy.model": ("Model name: {model}", "模型名称：{model}"),
    "deploy.call": (
        "Call it through the gateway at {url}, with one of its API keys:",
        "通过网关 {url} 调用（使用网关的 API 密钥之一）：",
    ),
    "deploy.no_gateway": (
        "Set TUNELOOP_GATEWAY_URL to show here how to call it through the gateway.",
        "设置 TUNELOOP_GATEWAY_URL 后，这里会显示如何通过网关调用它。",
    ),
    "deploy.warning": ("warning: {warning}", "警告：{warning}"),
    "rollback.done": ("{project} rolled back: {message}", "{project} 已回滚：{message}"),
    # refusals
    "refused.role": (
        "{who} may not {doing} in {project}: its {role} are {names}.",
        "{who} 不能在 {project} 中{doing}：{role}为 {names}。",
    ),
    "refused.operator": (
        "Deploying without approval is an operator's action, on the terminal: "
        "tuneloop deploy {run} --unapproved REASON.",
        "未经审批的部署只能由运维在终端执行：tuneloop deploy {run} --unapproved 理由。",
    ),
    "refused.reason": ("Deploying without approval needs a reason.", "未经审批的部署需要填写理由。"),
    "doing.requester": ("start runs", "发起运行"),
    "doing.reviewer": ("review samples", "审核样本"),
    "doing.approver": ("approve or roll back deployments", "审批或回滚部署"),
    "doing.configure": ("change who does what", "修改成员设置"),
    "doing.cancel": ("cancel or retry run {run}", "取消或重试运行 {run}"),
    # language
    "language.set": ("I will answer you in English.", "之后将用中文回复你。"),
    # buttons
    "button.keep": ("Keep", "保留"),
    "button.fix": ("Fix", "修正"),
    "button.drop": ("Drop", "删除"),
    "button.review": ("Review samples", "审核样本"),
    "button.retrain": ("Retrain", "重新训练"),
    "button.retrain_changes": ("Retrain with {n} changes", "重新训练（{n} 处改动）"),
    "button.retrain_changes.one": ("Retrain with 1 change", "重新训练（1 处改动）"),
    "button.retrain_dpo": ("SFT + DPO on {n} pairs", "SFT + DPO（{n} 对偏好数据）"),
    "button.request_approval": ("Request approval", "提交审批"),
    "button.approve": ("Approve & deploy", "批准并部署"),
    "button.override": ("Approve over the gate…", "越过门槛批准…"),
    "button.rollback": ("Roll back", "回滚"),
    "button.cancel": ("Cancel run", "取消运行"),
    "button.retry": ("Retry", "重试"),
    "button.summary": ("Review summary", "审核汇总"),
    # events
    "event.move": ("run {run}: {origin} → {to} by {who}", "运行 {run}：{origin} → {to}，操作人 {who}"),
    "event.failed": ("run {run} failed ({stage}): {error}", "运行 {run} 失败（{stage}）：{error}"),
    "event.warning": ("run {run}: warning: {message}", "运行 {run}：警告：{message}"),
    "event.stage": ("run {run}: {stage} {detail}", "运行 {run}：{stage} {detail}"),
    "event.report": ("run {run}: {stage} report {detail}", "运行 {run}：{stage} 报告 {detail}"),
    "event.training": ("run {run}: training into {folder}", "运行 {run}：开始训练，输出到 {folder}"),
    "event.evaluate": ("run {run}: {detail}", "运行 {run}：{detail}"),
    "evaluate.generate": (
        "answering {samples} test samples with the base and the tuned model",
        "基座模型和微调模型正在回答 {samples} 个测试样本",
    ),
    "evaluate.reference": ("reference metrics and perplexity", "计算参考指标和困惑度"),
    "evaluate.stability": (
        "stability: {k} sampled answers to {prompts} prompts",
        "稳定性：{prompts} 个问题各采样 {k} 次",
    ),
    "evaluate.forgetting": ("the general-ability probe (forgetting)", "通用能力探针（遗忘）"),
    "evaluate.judge_llm": ("judging with the LLM judge", "LLM 评审打分中"),
    "evaluate.judge_metric": ("judging with the metric judge", "指标评审打分中"),
    "evaluate.report": ("writing the report", "生成报告"),
    "report.title": ("Run {run} evaluated: gate {gate}", "运行 {run} 评估完成：门槛{gate}"),
    "report.score": ("tuned overall {tuned} (base {base})", "微调后总分 {tuned}（基座 {base}）"),
    "report.judge": ("judge", "评审"),
    "report.win_rate": ("win rate", "胜率"),
    "report.since": ("since iteration {iteration}: {line}", "相比第 {iteration} 轮：{line}"),
    "report.file": ("report", "报告"),
    # what a chat face asks for and tells about files and posting
    "modal.upload_title": ("Fine-tune {project}", "微调 {project}"),
    "modal.start": ("Start", "开始"),
    "modal.data": ("Training data (JSONL, JSON, CSV or Parquet)", "训练数据（JSONL、JSON、CSV 或 Parquet）"),
    "modal.options": ("Options", "选项"),
    "modal.options_hint": ("e.g. epochs=2 lr=1e-4 rank=8 split", "例如 epochs=2 lr=1e-4 rank=8 split"),
    "modal.empty": ("Please write something first.", "请先填写内容。"),
    "button.cancel_confirm": ("Cancel", "取消"),
    "upload.send_data": (
        "Send the training data for {project} as a file (JSONL, JSON, CSV or Parquet) in reply to this message, with "
        "options such as epochs=2 as its caption; or reply data=latest to train on the project's current data.",
        "请回复本消息，以文件形式发送 {project} 的训练数据（JSONL、JSON、CSV 或 Parquet），可在文件说明中写选项，"
        "例如 epochs=2；或回复 data=latest，用项目现有的数据训练。",
    ),
    "upload.over_download_limit": (
        "{name} is {size} MB, and Telegram lets a bot download files of up to 20 MB. Send it in parts under 20 MB, "
        "or ask whoever runs tuneloop to run a local Bot API server (see the README), which takes files up to 2 GB.",
        "{name} 有 {size} MB，而 Telegram 只允许机器人下载不超过 20 MB 的文件。请拆成小于 20 MB 的几部分发送，"
        "或请 tuneloop 的管理员运行本地 Bot API 服务器（见 README），它可接收最大 2 GB 的文件。",
    ),
    "upload.without_command": (
        "To train on {name}, send it with /finetune <project> as its caption.",
        "要用 {name} 训练，请在发送文件时把 /finetune <项目> 写在文件说明里。",
    ),
    "confirm.not_done": ("Not done.", "未执行。"),
    "upload.too_big": (
        "{name} is {size} bytes; tuneloop takes files up to {limit} bytes.",
        "{name} 有 {size} 字节；tuneloop 只接收不超过 {limit} 字节的文件。",
    ),
    "upload.too_big_unknown": (
        "{name} is over {limit} bytes, the most tuneloop takes; split it or leave out what it does not need.",
        "{name} 超过 {limit} 字节，超出 tuneloop 的上限；请拆分文件或删去不需要的部分。",
    ),
    "upload.not_given": (
        "The chat did not hand over {name} (HTTP {status}); try uploading it again.",
        "聊天平台没有提供文件 {name}（HTTP {status}），请重新上传。",
    ),
    "upload.html_instead": (
        "Slack sent a web page instead of {name}: the app needs the files:read scope "
        "(add it to the app, reinstall it, then upload again).",
        "Slack 返回了网页而不是 {name}：应用缺少 files:read 权限（请在应用中添加该权限并重新安装，然后再次上传）。",
    ),
    "post.not_in_channel": (
        "invite @tuneloop to channel {channel} (/invite @tuneloop), then try again",
        "请先邀请 @tuneloop 加入频道 {channel}（/invite @tuneloop），然后重试",
    ),
    "post.channel_not_found": (
        "tuneloop cannot see channel {channel}: invite it there, or use a channel it is in",
        "tuneloop 看不到频道 {channel}：请邀请它加入，或在它所在的频道中使用",
    ),
    "post.is_archived": ("channel {channel} is archived", "频道 {channel} 已归档"),
    "post.too_long": ("the message was too long for the chat", "消息太长，聊天平台无法发送"),
    "post.layout": ("the chat refused the message's layout", "聊天平台拒绝了消息的版式"),
    "post.rate_limited": (
        "the chat keeps asking tuneloop to slow down; try again in a minute",
        "聊天平台一直要求 tuneloop 放慢速度，请一分钟后重试",
    ),
    # errors
    "error.internal": (
        "Something went wrong on our side ({kind}); the operators' logs have the details.",
        "系统内部出错（{kind}），详情见运维日志。",
    ),
}


def say(language: str | None, entry: str, /, **values: object) -> str:
    """The sentence `entry` in `language` (English when unknown), filled in with `values`."""
    english, chinese = CATALOGUE[entry]
    template = chinese if language == "zh" else english
    return template.format(**values)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def say_count(language: str | None, entry: str, n: int) -> str:
    """`entry` for `n` things: its `.one` form for exactly one where the catalogue has it."""
    return say(language, f"{entry}.one" if n == 1 and f"{entry}.one" in CATALOGUE else entry, n=n)
