"""Language models in xrisk (the ``llm`` extra): loading, batched generation, sequence log-probabilities,
DFT data and trainers. Re-exports only; ``XRiskTrainer``/``DFTTrainer`` import transformers on first use."""

from typing import Any

from xrisk.llm.data import DFTCollator, DFTDataset, Truncation, negative_columns, read_jsonl, select_negatives
from xrisk.llm.encoding import encode_completion, encode_prompt
from xrisk.llm.generation import (UNHELPFUL_SYSTEM_PROMPT, Completion, SamplingSettings, generate_completions,
                                  generate_negatives, reference_logprobs)
from xrisk.llm.loading import default_cache_dir, load_causal_lm, smollm2_gguf
from xrisk.llm.logprobs import sequence_logprobs, supports_shared_prompt
from xrisk.llm.steps import dft_batch_loss, sft_batch_loss, sft_warmup
from xrisk.llm.tasks import Task, addition_task, exact_match, split_records, word_problem_task
from xrisk.llm.tiny import char_tokenizer, tiny_llama
from xrisk.llm.token_stats import TokenStatistics, token_statistics

__all__ = [
    "load_causal_lm", "smollm2_gguf", "default_cache_dir",
    "sequence_logprobs", "supports_shared_prompt",
    "generate_completions", "generate_negatives", "reference_logprobs", "Completion", "SamplingSettings",
    "UNHELPFUL_SYSTEM_PROMPT",
    "encode_prompt", "encode_completion",
    "read_jsonl", "DFTDataset", "DFTCollator", "Truncation", "negative_columns", "select_negatives",
    "dft_batch_loss", "sft_batch_loss", "sft_warmup",
    "XRiskTrainer", "DFTTrainer",
    "Task", "addition_task", "word_problem_task", "split_records", "exact_match",
    "char_tokenizer", "tiny_llama",
    "token_statistics", "TokenStatistics",
]


def __getattr__(name: str) -> Any:
    if name in ("XRiskTrainer", "DFTTrainer"):
        from xrisk.llm import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'xrisk.llm' has no attribute {name!r}")
