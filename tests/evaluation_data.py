"""Answered test samples for the evaluation tests and bench, without generating anything."""

from collections.abc import Sequence

from engine.evaluate.results import GeneratedSample


def generated_sample(
    index: int, question: str, reference: str, base_answer: str, tuned_answer: str, tags: Sequence[str] = ()
) -> GeneratedSample:
    """A sample as generation leaves it; token counts and timings are placeholders nothing here reads."""
    return GeneratedSample(
        index=index,
        question=question,
        reference=reference,
        prompt=[{"role": "user", "content": question}],
        tags=list(tags),
        base_answer=base_answer,
        tuned_answer=tuned_answer,
        base_tokens=1,
        tuned_tokens=1,
        base_seconds=0.1,
        tuned_seconds=0.1,
        base_stopped=True,
        tuned_stopped=True,
    )
