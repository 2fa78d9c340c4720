"""Evaluation suite: BELEBELE, MMMLU, judged win rate (AlpacaEval style), language fidelity and the
Language Confusion Benchmark. ``evaluate(task, model, cfg, output_dir, **options)`` runs one task."""

from clo.eval.core import TASKS, EvalDataError, evaluate, get_task

__all__ = ["TASKS", "EvalDataError", "evaluate", "get_task"]
