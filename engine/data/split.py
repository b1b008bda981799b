"""Train / test (/ validation) split: seeded, stratified by sub-scenario tag, leak-checked.

Reproducibility: the split depends only on the samples' contents, the config and the seed, never
on Python's hash seed or on the order the samples arrive in. Within each stratum the samples are
put in content-hash order and then shuffled by a `random.Random` seeded with a string (which
Python hashes with SHA-512, not `hash()`).

Leaks: a test question that near-duplicates a training question measures memorisation, not
skill. Each test/validation sample's prompt text is looked up in a `NearDuplicateIndex` of the
training prompts; a hit moves the sample to "leak" (it is neither trained nor evaluated on).
"""

import math
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.data.dedup import NearDuplicateIndex
from engine.data.sample import Sample

Assignment = Literal["train", "test", "validation", "leak"]
ASSIGNMENTS: tuple[Assignment, ...] = ("train", "test", "validation", "leak")


class SplitError(ValueError):
    """The requested split cannot be made from these samples."""


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A value below 1 is a fraction of the samples, 1 or more an absolute count.
    test_size: float | int = Field(default=0.1, gt=0)
    val_size: float | int = Field(default=0, ge=0)
    seed: int = 42
    stratify_by_tag: bool = True
    leak_threshold: float = Field(default=0.9, gt=0, le=1)


class SplitOutcome(BaseModel):
    assignments: list[Assignment]  # one per input sample, in input order
    leaks: dict[int, tuple[int, float]] = Field(default_factory=dict)  # index → (train index, similarity)
    requested: dict[str, int] = Field(default_factory=dict)  # test/validation sizes before leak removal

    @property
    def counts(self) -> dict[str, int]:
        return {name: self.assignments.count(name) for name in ASSIGNMENTS}

    def indices(self, name: Assignment) -> list[int]:
        return [i for i, a in enumerate(self.assignments) if a == name]


def resolve_size(size: float | int, n: int, what: str = "test_size") -> int:
    """A ratio (< 1) or a count (>= 1) as a number of samples; ratios round half up, and a
    positive ratio never rounds down to zero samples."""
    if size < 0:
        raise SplitError(f"{what} must not be negative, got {size}")
    if size == 0:
        return 0
    if size < 1:
        return max(1, math.floor(size * n + 0.5))
    if size != int(size):
        raise SplitError(f"{what}={size}: use a fraction below 1 (e.g. 0.1) or a whole number of samples")
    return int(size)


def split_samples(samples: Sequence[Sample], config: SplitConfig) -> SplitOutcome:
    n = len(samples)
    if n < 2:
        raise SplitError(f"need at least 2 samples to split, got {n}")
    n_test = resolve_size(config.test_size, n, "test_size")
    n_val = resolve_size(config.val_size, n, "val_size")
    if n_test + n_val >= n:
        raise SplitError(
            f"test_size={config.test_size} ({n_test}) and val_size={config.val_size} ({n_val}) "
            f"leave no training samples out of {n}; use smaller sizes"
        )

    hashes = [s.content_hash for s in samples]
    strata: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        key = (sample.tags[0] if sample.tags else "") if config.stratify_by_tag else ""
        strata.setdefault(key, []).append(i)
    keys = sorted(strata)
    for key in keys:
        # Content order, then a seeded shuffle: independent of input order and of hash().
        members = sorted(strata[key], key=lambda i: (hashes[i], i))
        random.Random(f"{config.seed}:{key}").shuffle(members)
        strata[key] = members

    # Each stratum keeps at least one training sample, so a one-sample tag stays in train.
    sizes = {k: len(strata[k]) for k in keys}
    test_quota = _allocate(n_test, sizes, {k: sizes[k] - 1 for k in keys})
    val_quota = _allocate(n_val, sizes, {k: sizes[k] - 1 - test_quota[k] for k in keys})
    placed = sum(test_quota.values()) + sum(val_quota.values())
    if placed < n_test + n_val:
        raise SplitError(
            f"a stratified split can place only {placed} of {n_test + n_val} test/validation samples: "
            f"{sum(1 for k in keys if sizes[k] == 1)} of {len(keys)} tags have a single sample, which "
            "stays in train; use a smaller test_size or stratify_by_tag=False"
        )

    assignments: list[Assignment] = ["train"] * n
    for key in keys:
        members = strata[key]
        for i in members[: test_quota[key]]:
            assignments[i] = "test"
        for i in members[test_quota[key] : test_quota[key] + val_quota[key]]:
            assignments[i] = "validation"

    leaks = _find_leaks(samples, assignments, config.leak_threshold)
    for i in leaks:
        assignments[i] = "leak"
    return SplitOutcome(assignments=assignments, leaks=leaks, requested={"test": n_test, "validation": n_val})


def _allocate(total: int, sizes: dict[str, int], caps: dict[str, int]) -> dict[str, int]:
    """Share `total` among strata in proportion to their sizes (largest remainder), never
    exceeding a stratum's cap; ties go to the alphabetically first tag, for determinism."""
    n = sum(sizes.values())
    ideal = {k: total * sizes[k] / n for k in sizes}
    quota = {k: min(math.floor(ideal[k]), caps[k]) for k in sizes}
    left = total - sum(quota.values())
    # Rounding: one more to the strata with the largest fractional parts.
    for k in sorted(sizes, key=lambda k: (-(ideal[k] - math.floor(ideal[k])), k)):
        if left and quota[k] < caps[k]:
            quota[k] += 1
            left -= 1
    # Where caps bit (one-sample tags), refill from the strata with the most room.
    while left:
        room = sorted((k for k in sizes if quota[k] < caps[k]), key=lambda k: (quota[k] - caps[k], k))
        if not room:
            break
        quota[room[0]] += 1
        left -= 1
    return quota


def _find_leaks(
    samples: Sequence[Sample], assignments: list[Assignment], threshold: float
) -> dict[int, tuple[int, float]]:
    train = [i for i, a in enumerate(assignments) if a == "train"]
    held_out = [i for i, a in enumerate(assignments) if a in ("test", "validation")]
    prompts = [s.prompt_text() for s in samples]
    index = NearDuplicateIndex(threshold)
    # An empty prompt would "match" every other empty prompt; it says nothing about memorisation.
    keep = [i for i in train if prompts[i].strip()]
    index.add_many(keep, [prompts[i] for i in keep])
    queried = [i for i in held_out if prompts[i].strip()]
    leaks: dict[int, tuple[int, float]] = {}
    for i, hits in zip(queried, index.query_many([prompts[i] for i in queried]), strict=True):
        if hits:
            # The closest training sample; ties to the lowest index, so reports are stable.
            j, similarity = min(hits, key=lambda h: (-h[1], h[0]))
            leaks[i] = (j, similarity)
    return leaks
