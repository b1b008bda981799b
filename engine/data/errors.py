"""Problems found in input data, each naming the file, the record and the field."""

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class RecordProblem:
    file: str
    problem: str  # what was expected, in words: "expected a string, got a number"
    record: int | None = None  # 1-based record number in the file
    line: int | None = None  # 1-based line, for JSONL, CSV and TSV
    field: str | None = None  # path inside the record: "conversations[2].value"
    kind: str = "invalid"  # short key for the summary: missing_field, wrong_type, bad_json, ...

    def __str__(self) -> str:
        where = [self.file]
        if self.line is not None:
            where.append(f"line {self.line}")
        elif self.record is not None:
            where.append(f"record {self.record}")
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.problem}"


class DataError(Exception):
    """Input that cannot be used as it is; the CLI prints the problems and exits with code 2."""

    def __init__(self, problems: list[RecordProblem], headline: str | None = None) -> None:
        self.problems = problems
        self.headline = headline or f"{len(problems)} problem(s) in the input"
        super().__init__(self.headline)

    def summary(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)
