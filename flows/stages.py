"""What every retrain task is made of: the ``stage`` decorator (a named Prefect task whose wall
time goes into the run's timings), the in-memory task options, and the transient-only retries.
Shared by the flow (``flows.retrain``) and its Spark branch (``flows.retrain_spark``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from flows.config import RetrainConfig
from tasks.transient import is_transient

# Large values (matrices, factors, top-N arrays) pass between tasks in memory only: no result
# persistence, and no input hashing for a cache key (hashing a 17 M-pair matrix costs seconds).
IN_MEMORY: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}

# Wall seconds per stage of the running flow, filled by ``stage`` (None outside a retrain).
_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("recs_stage_timings", default=None)
# The stages that raised in the running flow, first failure first (None outside a retrain).
_FAILED: ContextVar[list[str] | None] = ContextVar("recs_failed_stages", default=None)


def stage(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """A Prefect task named ``name`` whose wall time (summed over calls and attempts) is recorded
    for the run's report, and logged as one line per call: the one place timings come from."""

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                get_run_logger().info("%s done in %.1f s", name, time.perf_counter() - start)
                return result
            except BaseException:
                failed = _FAILED.get()
                if failed is not None:
                    failed.append(name)
                raise
            finally:
                timings = _TIMINGS.get()
                if timings is not None:
                    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

        return task(name=name, **options)(timed)

    return wrap


def _retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors another attempt can fix."""
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return is_transient(exc)
    return False


def _retrying(t, config: RetrainConfig, backoff_seconds: float | None = None):
    """``t`` with the run's retry count and exponential back-off (transient errors only), from
    ``backoff_seconds`` or else the config's first delay."""
    first = config.retry.backoff_seconds if backoff_seconds is None else backoff_seconds
    return t.with_options(retries=config.retry.attempts, retry_delay_seconds=exponential_backoff(backoff_factor=first))
