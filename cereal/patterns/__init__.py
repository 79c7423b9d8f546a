"""Workflow patterns: a single task, a chain of sub-workflows, sub-workflows in parallel.

Chains and parallels run several *sub-workflows* (ordinary workflow executors) inside one
workflow instance. Each sub-workflow sees its own parameters, payload and task counters, and
gets back exactly the results of the tasks it enqueued: task parameters are never altered
for routing. See :class:`ChainState` and :class:`ParallelState` to read their states.
"""

from cereal.patterns.chain import ChainState, ChainWorkflowExecutor
from cereal.patterns.parallel import ParallelState, ParallelWorkflowExecutor
from cereal.patterns.single_task import SingleTaskWorkflowExecutor, register_single_task_workflow
from cereal.patterns.state import SubWorkflowState

__all__ = [
    "ChainState",
    "ChainWorkflowExecutor",
    "ParallelState",
    "ParallelWorkflowExecutor",
    "SingleTaskWorkflowExecutor",
    "SubWorkflowState",
    "register_single_task_workflow",
]
