"""Generated supervised tasks with one correct answer per prompt, and exact-match evaluation.

* :func:`addition_task`: ``"37+45="`` -> ``"82"`` (for tiny models trained from scratch);
* :func:`word_problem_task`: templated one-step word problems ("Mia has 7 pens. She buys 5 more. ...")
  answered with a number (for a small pretrained chat model such as SmolLM2-135M-Instruct).

A task's records are the JSONL records of :mod:`xrisk.llm.data` (``{"prompt", "answer"}``); train and
test prompts of :func:`split_records` never overlap.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xrisk.llm.generation import SamplingSettings, generate_completions

__all__ = ["Task", "addition_task", "word_problem_task", "split_records", "exact_match"]


@dataclass(frozen=True)
class Task:
    """A generated task: ``sample(rng) -> (prompt, answer)`` draws one problem; ``is_correct(completion,
    answer)`` decides exact match; ``chat`` says whether prompts are meant for a chat template."""

    name: str
    sample: Callable[[random.Random], tuple[str, str]]
    is_correct: Callable[[str, str], bool]
    chat: bool = False


def _addition(digits: int) -> Callable[[random.Random], tuple[str, str]]:
    def sample(rng: random.Random) -> tuple[str, str]:
        a, b = rng.randrange(10**digits), rng.randrange(10**digits)
        return f"{a}+{b}=", str(a + b)
    return sample


def addition_task(digits: int = 2) -> Task:
    """``"a+b="`` with ``a, b`` uniform in ``[0, 10^digits)``; correct iff the completion is exactly the sum."""
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    return Task(f"addition-{digits}", _addition(digits), lambda completion, answer: completion.strip() == answer)


_NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eva", "Ben", "Lily", "Jack"]
_THINGS = ["apples", "pens", "books", "stamps", "coins", "shells", "cards", "marbles", "stickers", "cookies"]


def _word_problem(rng: random.Random) -> tuple[str, str]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a = rng.randrange(2, 20)
    if rng.random() < 0.5:
        b = rng.randrange(1, 20)
        step, value = f"Then {name} buys {b} more {thing}.", a + b
    else:
        b = rng.randrange(1, a)
        step, value = f"Then {name} gives away {b} {thing}.", a - b
    prompt = (f"{name} has {a} {thing}. {step} How many {thing} does {name} have now? "
              "Reply with the number only.")
    return prompt, str(value)


def _last_integer_matches(completion: str, answer: str) -> bool:
    numbers = re.findall(r"-?\d+", completion.replace(",", ""))
    return bool(numbers) and numbers[-1] == answer


def word_problem_task() -> Task:
    """One-step addition/subtraction word problems (numbers below 40); correct iff the last integer of the
    completion is the answer (so "Mia has 12 pens." counts)."""
    return Task("word-problems", _word_problem, _last_integer_matches, chat=True)


def split_records(task: Task, num_train: int, num_test: int, *, seed: int = 0) -> tuple[list[dict[str, Any]],
                                                                                      list[dict[str, Any]]]:
    """``num_train`` and ``num_test`` records ``{"prompt", "answer"}`` with distinct prompts (no prompt in both).

    Raises:
        ValueError: the task has fewer distinct prompts than requested.
    """
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    want = num_train + num_test
    for _ in range(50 * want + 1000):
        if len(seen) == want:
            break
        prompt, answer = task.sample(rng)
        seen.setdefault(prompt, answer)
    if len(seen) < want:
        raise ValueError(f"task {task.name} gave only {len(seen)} distinct prompts, {want} requested")
    records = [{"prompt": p, "answer": a} for p, a in seen.items()]
    return records[:num_train], records[num_train:]


def exact_match(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], task: Task, *, batch_size: int = 32,
                max_new_tokens: int = 16) -> float:
    """Fraction of ``records`` whose greedy completion ``task.is_correct`` accepts (chat template iff ``task.chat``
    and the prompt is a string)."""
    if not records:
        raise ValueError("exact_match needs at least one record")
    outs = generate_completions(model, tokenizer, [r["prompt"] for r in records], batch_size=batch_size,
                                settings=SamplingSettings(do_sample=False, max_new_tokens=max_new_tokens),
                                chat_template=task.chat)
    hits = sum(task.is_correct(row[0].text, r["answer"]) for row, r in zip(outs, records))
    return hits / len(records)
