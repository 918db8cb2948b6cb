"""Synthetic tasks with known structure."""

from bnrank.tasks.base import TaskData, make_task
from bnrank.tasks.composition import composition_task

__all__ = ["TaskData", "make_task", "composition_task"]
