"""Evaluation suite: BELEBELE, MMMLU, judged win rate (AlpacaEval style), language fidelity, the
Language Confusion Benchmark and language preference on held-out quadruples.
``evaluate(task, model, cfg, output_dir, **options)`` runs one task; each task is a
:class:`~clo.eval.task.Task` in the registry (:func:`get_task`, :func:`tasks`, :func:`register`)."""

from clo.eval.core import EvalDataError, evaluate
from clo.eval.task import TASKS, Option, Task, get_task, register, tasks

__all__ = ["TASKS", "EvalDataError", "Option", "Task", "evaluate", "get_task", "register", "tasks"]
