"""Reading records out of a data file: streaming, within limits, in whatever encoding it came in.

Layouts (`kind`): "json" (a top-level array of objects, or an object holding one such array),
"jsonl" (one object per line), "csv" and "tsv" (a header row, then one record per row). Chosen by
extension (.json, .jsonl/.ndjson, .csv, .tsv), sniffed from the first bytes otherwise.

Encodings: a byte-order mark wins (UTF-8, UTF-16 LE/BE); UTF-16 without one is recognised by its
NUL bytes; otherwise the file must be strict UTF-8, or else strict GB18030. `encoding=` forces any
codec Python knows.

Failures of the file as a whole raise `DataError`: missing file, too large (by `stat`, or by
counting while reading), more records than allowed, bytes that do not decode, an unknown encoding
name. Failures inside one record (a malformed JSON line, an over-long line) are yielded as
`RecordProblem`s in the record stream, so one bad line does not hide the others.
"""

import codecs
import csv
import json
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data import bounded_json
from engine.data.bounded_json import TooDeepError
from engine.data.errors import DataError, RecordProblem

KINDS = ("json", "jsonl", "csv", "tsv")
CHUNK = 64 * 1024
_EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_SPREADSHEETS = (".xlsx", ".xlsm", ".xls", ".ods")


@dataclass(frozen=True)
class ReadLimits:
    max_bytes: int = 1 << 30  # a JSON array is held whole in memory, so keep this modest
    max_records: int = 2_000_000
    max_record_bytes: int = 8 << 20  # one JSONL line, CSV line or array element, in UTF-8 bytes


@dataclass(frozen=True)
class RawRecord:
    number: int  # 1-based, counting every record including the bad ones
    line: int | None  # 1-based line where the record starts
    data: Any


@dataclass(frozen=True)
class Opened:
    """A file whose encoding and layout are known; `records()` streams it."""

    path: Path
    kind: str
    encoding: str
    limits: ReadLimits
    _codec: str
    _skip: int  # bytes of byte-order mark to skip

    def records(self) -> Iterator[RawRecord | RecordProblem]:
        chunks = _chunks(self.path, self._codec, self._skip, self.limits)
        if self.kind == "json":
            items: Iterator[RawRecord | RecordProblem] = _json_records(self.path, chunks, self.limits)
        elif self.kind == "jsonl":
            items = _jsonl_records(self.path, chunks, self.limits)
        else:
            items = _table_records(self.path, chunks, self.limits, "\t" if self.kind == "tsv" else ",")
        return _count_records(self.path, items, self.limits)


def open_records(
    path: Path, *, kind: str | None = None, encoding: str | None = None, limits: ReadLimits | None = None
) -> Opened:
    """Check the file, settle its encoding and layout. Raises DataError for file-level failures."""
    path = Path(path)
    limits = limits or ReadLimits()
    _check_size(path, limits)
    codec, skip, name = _settle_encoding(path, encoding, limits)
    if kind is None:
        with closing(_chunks(path, codec, skip, limits, max_chunks=1)) as first:
            head = next(first, "")
        kind = _sniff_kind(path, head)
    elif kind not in KINDS:
        raise fatal(_problem(path, f"unknown file layout '{kind}', expected one of {', '.join(KINDS)}"))
    return Opened(path, kind, name, limits, codec, skip)


def read_records(
    path: Path, *, kind: str | None = None, encoding: str | None = None, limits: ReadLimits | None = None
) -> Iterator[RawRecord | RecordProblem]:
    return open_records(path, kind=kind, encoding=encoding, limits=limits).records()


# --- bytes and encodings -------------------------------------------------------------------------


def fatal(problem: RecordProblem) -> DataError:
    """A file-level failure: one problem, which is also the headline the CLI prints."""
    return DataError([problem], str(problem))


def _problem(path: Path, text: str, kind: str = "invalid", **where: Any) -> RecordProblem:
    return RecordProblem(file=str(path), problem=text, kind=kind, **where)


def _too_large(path: Path, size: str, limit: int) -> DataError:
    problem = _problem(path, f"the file is {size}, over the limit of {_human(limit)}", "too_large")
    return fatal(problem)


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _check_size(path: Path, limits: ReadLimits) -> None:
    # stat first, so a huge file is refused without reading a byte of it
    try:
        st = path.stat()
    except FileNotFoundError:
        raise fatal(_problem(path, "no such file", "missing_file")) from None
    if stat.S_ISDIR(st.st_mode):
        raise fatal(_problem(path, "is a folder, not a data file", "missing_file"))
    if st.st_size > limits.max_bytes:
        raise _too_large(path, _human(st.st_size), limits.max_bytes)
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix.lower() in _SPREADSHEETS or head.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        text = "a spreadsheet (Excel or OpenDocument), not a text data file: save it as CSV (UTF-8) and import that"
        raise fatal(_problem(path, text, "spreadsheet"))


def _chunks(path: Path, codec: str, skip: int, limits: ReadLimits, max_chunks: int | None = None) -> Iterator[str]:
    """Decoded text, chunk by chunk; counts bytes as it goes (stat can lie: pipes, growing files)."""
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    offset, newlines, first, taken = skip, 0, True, 0
    with path.open("rb") as f:
        f.seek(skip)
        while max_chunks is None or taken < max_chunks:
            data = f.read(CHUNK)
            if offset + len(data) > limits.max_bytes:
                raise _too_large(path, f"over {_human(limits.max_bytes)}", limits.max_bytes)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                # e.object is the decoder's pending bytes plus this chunk
                bad = offset + len(data) - len(e.object) + e.start
                line = newlines + e.object[: e.start].decode(codec, errors="ignore").count("\n") + 1
                raise _undecodable(path, codec, bad, line, e) from None
            offset += len(data)
            if first:
                text, first = text.removeprefix("\ufeff"), False
            newlines += text.count("\n")
            if text:
                taken += 1
                yield text
            if not data:
                return


def _undecodable(path: Path, codec: str, offset: int, line: int, e: UnicodeDecodeError) -> DataError:
    text = (
        f"not valid {codec} at byte {offset} (line {line}): {e.reason}; "
        "give the file's encoding with --encoding (e.g. --encoding gb18030 or --encoding latin-1)"
    )
    return fatal(_problem(path, text, "encoding", line=line))


def _settle_encoding(path: Path, forced: str | None, limits: ReadLimits) -> tuple[str, int, str]:
    """(codec to decode with, BOM bytes to skip, name to report)."""
    if forced:
        try:
            codec = codecs.lookup(forced).name
        except LookupError:
            raise fatal(_problem(path, f"unknown encoding '{forced}'", "encoding")) from None
        return codec, 0, codec
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3, "utf-8-sig"
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2, "utf-16-le"
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2, "utf-16-be"
    utf16 = _utf16_without_bom(head)
    if utf16:
        return utf16, 0, utf16
    # Strict UTF-8 first: GB18030 would decode most UTF-8 bytes too, into nonsense.
    try:
        for _ in _chunks(path, "utf-8", 0, limits):
            pass
        return "utf-8", 0, "utf-8"
    except DataError as e:
        if e.problems[0].kind != "encoding":
            raise
        first_failure = e
    try:
        for _ in _chunks(path, "gb18030", 0, limits):
            pass
        return "gb18030", 0, "gb18030"
    except DataError as e:
        if e.problems[0].kind != "encoding":
            raise
    p = first_failure.problems[0]
    text = p.problem.replace("give the file's", "nor is it GB18030; give the file's")
    raise fatal(RecordProblem(p.file, text, line=p.line, kind="encoding"))


def _utf16_without_bom(head: bytes) -> str | None:
    """JSON and CSV syntax is ASCII, so UTF-16 text has NULs in every other byte."""
    pairs = len(head) // 2
    if pairs < 2:
        return None
    even = head[0 : pairs * 2 : 2].count(0)
    odd = head[1 : pairs * 2 : 2].count(0)
    if odd >= pairs * 0.2 and even <= odd * 0.05:
        return "utf-16-le"
    if even >= pairs * 0.2 and odd <= even * 0.05:
        return "utf-16-be"
    return None


def _sniff_kind(path: Path, head: str) -> str:
    by_extension = _EXTENSIONS.get(path.suffix.lower())
    if by_extension in ("jsonl", "csv", "tsv"):
        return by_extension
    text = head.lstrip(" \t\r\n")
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        # a .json file is often JSON Lines in disguise: two lines that each parse on their own
        lines = [line for line in text.splitlines() if line.strip()][:2]
        if len(lines) == 2 and all(_is_object(line) for line in lines):
            return "jsonl"
        return "json"
    if by_extension == "json":
        return "json"  # let the JSON parser say what is wrong with it
    first_line = text.split("\n", 1)[0]
    if "\t" in first_line:
        return "tsv"
    if "," in first_line:
        return "csv"
    raise fatal(_problem(path, "cannot tell whether this is JSON, JSON Lines, CSV or TSV", "unknown_format"))


def _is_object(line: str) -> bool:
    try:
        return isinstance(bounded_json.loads(line), dict)
    except ValueError:
        return False


# --- layouts -------------------------------------------------------------------------------------


def _count_records(
    path: Path, items: Iterator[RawRecord | RecordProblem], limits: ReadLimits
) -> Iterator[RawRecord | RecordProblem]:
    for item in items:
        number = item.number if isinstance(item, RawRecord) else item.record
        if number is not None and number > limits.max_records:
            text = f"more than {limits.max_records} records; split the file or raise the limit"
            raise fatal(_problem(path, text, "too_large", record=number))
        yield item


def _utf8_len_over(text: str, limit: int) -> bool:
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8")) > limit)


def _lines(chunks: Iterable[str], limit: int) -> Iterator[tuple[int, str | None]]:
    """(line number, text without line ending), text None for a line over `limit`: such a line is
    skipped as it streams past, never held whole (this is a readline with a bound)."""
    pending: list[str] = []
    pending_len, number, too_long = 0, 0, False
    for chunk in chunks:
        parts = chunk.split("\n")
        for part in parts[:-1]:
            number += 1
            if too_long:
                too_long = False
                yield number, None
                continue
            line = "".join(pending) + part if pending else part
            pending.clear()
            pending_len = 0
            yield number, (None if _utf8_len_over(line, limit) else line.removesuffix("\r"))
        tail = parts[-1]
        if too_long or not tail:
            continue
        pending.append(tail)
        pending_len += len(tail)
        if pending_len > limit:
            too_long, pending, pending_len = True, [], 0
    if too_long:
        yield number + 1, None
    elif pending:
        line = "".join(pending)
        yield number + 1, (None if _utf8_len_over(line, limit) else line.removesuffix("\r"))


def _over_long(path: Path, limit: int, record: int, line: int) -> RecordProblem:
    text = f"record longer than {_human(limit)}; skipped"
    return _problem(path, text, "too_large", record=record, line=line)


def _jsonl_records(path: Path, chunks: Iterable[str], limits: ReadLimits) -> Iterator[RawRecord | RecordProblem]:
    number = 0
    for line_no, text in _lines(chunks, limits.max_record_bytes):
        if text is None:
            number += 1
            yield _over_long(path, limits.max_record_bytes, number, line_no)
            continue
        if not text.strip():
            continue
        number += 1
        try:
            data = bounded_json.loads(text)
        except json.JSONDecodeError as e:
            yield _problem(path, f"invalid JSON at column {e.colno}: {e.msg}", "bad_json", record=number, line=line_no)
            continue
        except TooDeepError as e:
            yield _too_deep(path, e, record=number, line=line_no)
            continue
        yield RawRecord(number, line_no, data)


def _json_records(path: Path, chunks: Iterable[str], limits: ReadLimits) -> Iterator[RawRecord | RecordProblem]:
    # The stdlib cannot stream JSON, but it can decode one array element at a time, which lets us
    # keep the records before a break and say on which line each record starts.
    text = "".join(chunks)
    i = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    if i == len(text):
        yield _problem(path, "the file is empty", "empty_file")
        return
    if text[i] == "{":
        yield from _json_object(path, text)
        return
    if text[i] != "[":
        yield _problem(path, "expected a JSON array of records or an object", "bad_json", line=_line_of(text, i))
        return
    i += 1
    number, line, line_pos = 0, 1, 0
    while True:
        i = _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]
        if number > 0 and i < len(text) and text[i] == ",":
            i = _WHITESPACE.match(text, i + 1).end()  # type: ignore[union-attr]
        elif number > 0 and i < len(text) and text[i] != "]":
            yield _problem(
                path, f"expected ',' or ']' at {_where(text, i)}", "bad_json", record=number + 1, line=_line_of(text, i)
            )
            return
        if i == len(text):
            where = _where(text, i)
            yield _problem(
                path,
                f"the JSON ends at {where} inside the array (missing ']'); is it truncated?",
                "bad_json",
                record=number + 1,
                line=_line_of(text, i),
            )
            return
        if text[i] == "]":
            rest = _WHITESPACE.match(text, i + 1).end()  # type: ignore[union-attr]
            if rest != len(text):
                yield _problem(
                    path,
                    f"unexpected data after the array at {_where(text, rest)}",
                    "bad_json",
                    line=_line_of(text, rest),
                )
            return
        try:
            data, end = bounded_json.raw_decode(text, i)
        except TooDeepError as e:  # where it ends is unknown: stop here, as for an element that does not parse
            yield _too_deep(path, e, record=number + 1, line=_line_of(text, i))
            return
        except json.JSONDecodeError as e:
            text_ = f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            if e.pos >= len(text) - 1 or "Unterminated" in e.msg:
                text_ += "; is the file truncated?"
            yield _problem(path, text_, "bad_json", record=number + 1, line=e.lineno)
            return
        number += 1
        line += text.count("\n", line_pos, i)
        line_pos = i
        if end - i > limits.max_record_bytes and _utf8_len_over(text[i:end], limits.max_record_bytes):
            yield _over_long(path, limits.max_record_bytes, number, line)
        else:
            yield RawRecord(number, line, data)
        i = end


def _json_object(path: Path, text: str) -> Iterator[RawRecord | RecordProblem]:
    try:
        data = bounded_json.loads(text)
    except TooDeepError as e:
        yield _too_deep(path, e, record=1, line=1)
        return
    except json.JSONDecodeError as e:
        hint = "; one object per line is JSON Lines: name the file .jsonl" if e.msg == "Extra data" else ""
        yield _problem(
            path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}", "bad_json", line=e.lineno
        )
        return
    # {"data": [...]} holds the records; any other object is itself the one record
    lists = [v for v in data.values() if isinstance(v, list)]
    if len(data) == 1 and len(lists) == 1 and lists[0] and all(isinstance(r, dict) for r in lists[0]):
        inner = lists[0]
        if not any(k in inner[0] for k in ("from", "role", "value", "content")):  # not a conversation
            for n, record in enumerate(inner, 1):
                yield RawRecord(n, None, record)
            return
    yield RawRecord(1, 1, data)


def _too_deep(path: Path, error: TooDeepError, *, record: int, line: int) -> RecordProblem:
    return _problem(path, str(error), "too_deep", record=record, line=line, field=error.field)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _where(text: str, pos: int) -> str:
    line = _line_of(text, pos)
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def _table_records(
    path: Path, chunks: Iterable[str], limits: ReadLimits, delimiter: str
) -> Iterator[RawRecord | RecordProblem]:
    skipped: list[int] = []  # over-long lines, reported after the row they were in

    def feed() -> Iterator[str]:
        for line_no, text in _lines(chunks, limits.max_record_bytes):
            if text is None:
                skipped.append(line_no)
                yield "\n"
            else:
                yield text + "\n"

    dialect = csv.excel_tab if delimiter == "\t" else csv.excel
    reader = csv.reader(feed(), dialect)
    header: list[str] | None = None
    number, last_line = 0, 0
    while True:
        start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            number += 1
            yield _problem(path, f"unreadable row: {e}", "bad_csv", record=number, line=reader.line_num)
            last_line = reader.line_num
            continue
        last_line = reader.line_num
        for line_no in skipped:
            number += 1
            yield _over_long(path, limits.max_record_bytes, number, line_no)
        skipped.clear()
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            continue
        number += 1
        if len(row) != len(header):
            text = f"expected {len(header)} cells (as in the header row), got {len(row)}"
            yield _problem(path, text, "bad_csv", record=number, line=start)
            continue
        yield RawRecord(number, start, {name: cell for name, cell in zip(header, row, strict=True) if name})
    for line_no in skipped:
        number += 1
        yield _over_long(path, limits.max_record_bytes, number, line_no)
