"""Trustworthiness of vision-language models: AutoTrust's five dimensions, model-agnostic.

See the guide page ``docs/trust.md``. Command: ``xrisk trust ...`` (:mod:`xrisk.trust.cli`).
"""

from xrisk.trust.adapters import ADAPTERS, VLMAdapter, WhiteBoxAdapter, adapter_names, get_adapter, register_adapter
from xrisk.trust.attacks import bim, carlini_wagner, gaussian_noise, pgd, white_box_attack
from xrisk.trust.dimensions import DIMENSIONS, DimensionResult, TrustSettings, evaluate_dimension
from xrisk.trust.engine import AnswerCache, Session
from xrisk.trust.judge import AdapterJudge, Judge, OverlapJudge, judge_ratio
from xrisk.trust.records import QARecord, RecordError, load_ego_patterns, load_records, save_records
from xrisk.trust.report import write_report
from xrisk.trust.rules import EchoAdapter, RandomAdapter, RefusingAdapter
from xrisk.trust.run import run_evaluation
from xrisk.trust.suite import Suite, SuiteConfig, load_suite, make_suite
from xrisk.trust.vqa import SceneVQA, VQAAdapter, load_vqa, train_vqa

__all__ = [
    "ADAPTERS", "VLMAdapter", "WhiteBoxAdapter", "adapter_names", "get_adapter", "register_adapter",
    "bim", "carlini_wagner", "gaussian_noise", "pgd", "white_box_attack",
    "DIMENSIONS", "DimensionResult", "TrustSettings", "evaluate_dimension",
    "AnswerCache", "Session",
    "AdapterJudge", "Judge", "OverlapJudge", "judge_ratio",
    "QARecord", "RecordError", "load_ego_patterns", "load_records", "save_records",
    "write_report",
    "EchoAdapter", "RandomAdapter", "RefusingAdapter",
    "run_evaluation",
    "Suite", "SuiteConfig", "load_suite", "make_suite",
    "SceneVQA", "VQAAdapter", "load_vqa", "train_vqa",
]
