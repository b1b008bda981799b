"""The things a person can do, one typed action each. A face builds them from what was typed (`bot.core.grammar`),
pressed (a button's stored action) or passed as options (the terminal), and `bot.core.perform` carries them out.
Actions are plain data: they are stored under a button's key as JSON and read back, never unpickled."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Help(_Action):
    kind: Literal["help"] = "help"
    topic: str | None = None


class NewProject(_Action):
    kind: Literal["new_project"] = "new_project"
    project: str
    base_model: str | None = None
    template: str | None = None
    language: str | None = None


class ConfigureProject(_Action):
    """Change a project's settings (`create`: making it first when it does not exist); None leaves a setting as it
    is, an empty list clears a list (anyone may then)."""

    kind: Literal["configure_project"] = "configure_project"
    project: str
    create: bool = False
    base_model: str | None = None
    template: str | None = None
    tokenizer: str | None = None  # a tokenizer folder or tokenizer.json on this machine, for token lengths
    reviewers: list[str] | None = None
    approvers: list[str] | None = None
    requesters: list[str] | None = None
    channels: list[str] | None = None
    language: str | None = None
    four_eyes: bool | None = None  # the requester of a run may not approve it


class ShowProject(_Action):
    kind: Literal["show_project"] = "show_project"
    project: str


class StartRun(_Action):
    """A run on the workers: on a dataset version (`data`: N, latest, NAME or NAME:N), on a file just uploaded
    (`upload`, imported first as a new version), or on synthesized data (`synthesize` samples about `task`)."""

    kind: Literal["start_run"] = "start_run"
    project: str
    data: str = "latest"
    upload: str | None = None
    upload_name: str | None = None  # the file's name as the person sent it, for messages
    options: dict[str, Any] = Field(default_factory=dict)  # recipe keys (LLaMA-Factory's names)
    recipe: str | None = None  # a recipe YAML on this machine (the terminal); the default recipe if unset
    synthesize: int | None = None
    task: str | None = None
    filter: bool = False
    split: bool = False
    test_size: float = 0.1


class ImportData(_Action):
    """A file shared with the bot, imported as a new version of a project's dataset: the project of `run` (a file
    shared in a run's thread) or `project`. Its summary answers in the run's thread, with the rejects file when
    some records were refused."""

    kind: Literal["import_data"] = "import_data"
    upload: str = ""  # the file's path on this machine: a face sets it once it has fetched the file
    upload_name: str | None = None
    run: int | None = None
    project: str | None = None
    create: bool = False  # a project of that name is created first (the terminal's import)
    dataset: str = "main"
    # How to read the file (the terminal's options; a chat file is read as detected).
    format: str = "auto"
    encoding: str | None = None
    entry: str | None = None  # the entry of a dataset_info.json
    # A chat keeps the valid records and answers with the rejects file; the terminal refuses a file with any invalid
    # record unless asked to skip them.
    skip_invalid: bool = True
    rejects: str | None = None  # where the refused records go; beside the upload if unset
    max_bytes: int | None = None  # the operator's own size limit (the terminal); the settings' otherwise


class Status(_Action):
    kind: Literal["status"] = "status"
    run: int | None = None  # None: the runs still going


class ListRuns(_Action):
    kind: Literal["list_runs"] = "list_runs"
    project: str | None = None
    state: str | None = None


class ShowHistory(_Action):
    kind: Literal["show_history"] = "show_history"
    run: int


class ShowReport(_Action):
    """The run's latest evaluation: the gate, the numbers, the charts and the HTML report."""

    kind: Literal["show_report"] = "show_report"
    run: int


class Cancel(_Action):
    kind: Literal["cancel"] = "cancel"
    run: int


class Retry(_Action):
    kind: Literal["retry"] = "retry"
    run: int


class ShowReview(_Action):
    """The run's weakest judged samples, one card each, to keep, fix or drop."""

    kind: Literal["show_review"] = "show_review"
    run: int
    limit: int = Field(default=5, ge=1, le=50)


class Review(_Action):
    kind: Literal["review"] = "review"
    run: int
    judgement: int
    verdict: Literal["keep", "fix", "drop"]
    answer: str | None = None  # the corrected answer of a fix
    comment: str | None = None


class ShowReviewSummary(_Action):
    kind: Literal["review_summary"] = "review_summary"
    run: int


class Retrain(_Action):
    """The next iteration: the reviews become a new dataset version, and a run on it is queued; with `dpo`, the
    run trains SFT then DPO on the project's preference pairs from reviews (offered once it has enough)."""

    kind: Literal["retrain"] = "retrain"
    run: int
    dpo: bool = False


class RequestApproval(_Action):
    kind: Literal["request_approval"] = "request_approval"
    run: int


class Approve(_Action):
    """Approve a run and deploy it; `override` is an approver's reason to deploy a run that failed its gate."""

    kind: Literal["approve"] = "approve"
    run: int
    override: str | None = None
    servers: list[str] | None = None  # the terminal may name vLLM servers; the settings' otherwise


class DeployUnapproved(_Action):
    """The operator's way around approval, on the terminal only, with a reason that is audited."""

    kind: Literal["deploy_unapproved"] = "deploy_unapproved"
    run: int
    reason: str
    servers: list[str] | None = None


class Rollback(_Action):
    kind: Literal["rollback"] = "rollback"
    project: str
    servers: list[str] | None = None


class SetLanguage(_Action):
    kind: Literal["set_language"] = "set_language"
    language: str


# --- a project's data (the terminal's `data` commands; a chat face may offer them) ---------------------------


class FilterData(_Action):
    """Run the quality filter over a dataset version (`version`: the latest if unset) into a new version; `settings`
    are FilterConfig's keys, `source` the file they came from (named in what is wrong with them)."""

    kind: Literal["filter_data"] = "filter_data"
    project: str
    dataset: str = "main"
    version: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None
    tokenizer: str | None = None  # a tokenizer folder or tokenizer.json on this machine; the project's if unset


class SplitData(_Action):
    """Split a dataset version into train/test (and validation): a size below 1 is a share, 1 or more a count."""

    kind: Literal["split_data"] = "split_data"
    project: str
    dataset: str = "main"
    version: int | None = None
    test_size: float = 0.1
    val_size: float = 0
    seed: int = 42
    stratify: bool = True


class ExportData(_Action):
    """Write the samples in use (of one split, or all) in `format` into the folder `out` on this machine: the
    terminal's only."""

    kind: Literal["export_data"] = "export_data"
    project: str
    format: str
    out: str
    dataset: str = "main"
    version: int | None = None
    split: str | None = None


class ShowDataReport(_Action):
    """What a dataset version holds and what was removed, by rule; its Markdown and length histogram are kept in the
    artifact store and come with the message."""

    kind: Literal["show_data_report"] = "show_data_report"
    project: str
    dataset: str = "main"
    version: int | None = None


class ListVersions(_Action):
    kind: Literal["list_versions"] = "list_versions"
    project: str
    dataset: str = "main"


class ShowSamples(_Action):
    """Samples of a version (numbered from 1): the ones asked for, or those removed by `rule` ('any': removed by
    any), or in `split`; at most `limit`."""

    kind: Literal["show_samples"] = "show_samples"
    project: str
    dataset: str = "main"
    version: int | None = None
    samples: list[int] | None = None
    rule: str | None = None
    split: str | None = None
    limit: int = Field(default=10, ge=1)


class Synthesize(_Action):
    """Have a model write training data about `task` into a new, unreviewed version, in this process: the
    terminal's only (a chat starts a run that synthesizes first, on the workers). Weights map a name to its share;
    a job of the same settings resumes where it stopped."""

    kind: Literal["synthesize"] = "synthesize"
    project: str
    task: str
    n: int = 100
    model: str | None = None
    scenarios: dict[str, float] | None = None
    personas: dict[str, float] | None = None
    moods: dict[str, float] | None = None
    difficulties: dict[str, float] | None = None
    use_existing_tags: bool = True
    multi_turn_ratio: float = 0.3
    per_request: int = 10
    seed_version: int | None = None
    few_shot: int = 3
    system_prompt: str | None = None
    concurrency: int | None = None
    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    job: str | None = None
    seed: int = 0
    temperature: float = 0.9
    dataset: str = "main"


class ListProjects(_Action):
    kind: Literal["list_projects"] = "list_projects"


# --- work done in this process, and the servers: the terminal's (an operator's) --------------------------------


class Train(_Action):
    """Train here, in this process (or `processes` launched by accelerate): the terminal's only. A new run on a
    dataset version (`data`: N, latest, NAME or NAME:N), or with `resume` that run again from its last checkpoint."""

    kind: Literal["train"] = "train"
    project: str
    data: str = "latest"
    recipe: str | None = None  # a recipe YAML on this machine; the default recipe if unset
    options: dict[str, Any] = Field(default_factory=dict)  # recipe keys over the file's (the terminal's --base-model)
    out: str | None = None  # a folder of this machine instead of the artifact store
    resume: int | None = None
    processes: int = Field(default=1, ge=1)


class Evaluate(_Action):
    """Evaluate a run here, in this process: the terminal's only (a worker evaluates the runs it trains)."""

    kind: Literal["evaluate"] = "evaluate"
    run: int
    judge: Literal["auto", "llm", "metric"] = "auto"
    max_samples: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    batch_size: int = Field(default=8, ge=1)
    stability_prompts: int = Field(default=8, ge=0)
    stability_k: int = Field(default=3, ge=2)
    forgetting: bool = True
    pairwise: bool = True
    weakest: int = Field(default=10, ge=0)


class ExportModel(_Action):
    """Write a run's adapter, or with `merge` a merged model checked for its end of turn, to a folder of this
    machine: the terminal's only."""

    kind: Literal["export_model"] = "export_model"
    run: int
    merge: bool = False
    out: str | None = None  # the run's own folder if unset


class ListDeployments(_Action):
    kind: Literal["list_deployments"] = "list_deployments"
    project: str | None = None


class SyncServers(_Action):
    """Make the model servers match the deployments (reload what a restart lost, unload what is no longer
    deployed): a project's approvers for their project, the terminal for every project."""

    kind: Literal["sync_servers"] = "sync_servers"
    project: str | None = None
    servers: list[str] | None = None


class Reconcile(_Action):
    """Make the queues match the database: the terminal's only (every worker reconciles on its own)."""

    kind: Literal["reconcile"] = "reconcile"


Action = Annotated[
    Help
    | NewProject
    | ConfigureProject
    | ShowProject
    | StartRun
    | ImportData
    | Status
    | ListRuns
    | ShowHistory
    | ShowReport
    | Cancel
    | Retry
    | ShowReview
    | Review
    | ShowReviewSummary
    | Retrain
    | RequestApproval
    | Approve
    | DeployUnapproved
    | Rollback
    | SetLanguage
    | FilterData
    | SplitData
    | ExportData
    | ShowDataReport
    | ListVersions
    | ShowSamples
    | Synthesize
    | ListProjects
    | Train
    | Evaluate
    | ExportModel
    | ListDeployments
    | SyncServers
    | Reconcile,
    Field(discriminator="kind"),
]
ACTION = TypeAdapter(Action)


def dump_action(action: Action) -> dict[str, Any]:
    return action.model_dump(mode="json", exclude_defaults=True) | {"kind": action.kind}


def load_action(data: dict[str, Any]) -> Action:
    return ACTION.validate_python(data)


def with_text(action: Action, text: str) -> Action:
    """The action of a button that asked for text, with the text given: a Fix's corrected answer, an override's
    reason."""
    if isinstance(action, Review):
        return action.model_copy(update={"answer": text})
    if isinstance(action, Approve):
        return action.model_copy(update={"override": text})
    raise ValueError(f"a {action.kind} takes no text")
