"""An experiment's report rows, read in a forked child while the report imports pandas.

A report over 10,000 stages spends about 0.9 s importing pandas and 1.2 s reading, verifying
and flattening records (2-core AVX2 EPYC, idle): on two cores the two overlap. The child
returns the rows (`columns.stage_row`) column by column, and the records that did not verify:
columns of flat values pickle in a tenth of the time nested records take. Small results directories are read inline (a
child costs ~0.1 s), as is everything where `fork` is not available.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
from typing import Any, Callable

from vitrun.columns import columnar, stage_row
from vitrun.store import Problem, Store

MIN_STAGES = 2000  # below this a child costs more than it saves
Rows = tuple[dict[str, list[Any]], list[Problem]]


def rows(store: Store, experiment: str) -> Rows:
    """(the verified records' rows, column by column (`columns.columnar`), a Problem per record
    that does not verify)."""
    scan = store.scan(experiment)
    return columnar([stage_row(record) for record in scan.records]), scan.problems


def read_ahead(store: Store, experiments: list[str]) -> Callable[[str], Rows]:
    """Start reading `experiments` now; the returned function gives one's rows (waiting for them).

    Call it before importing pandas: the child is forked from a process that has not loaded it."""
    many = sum(len(store.stage_files(name)) for name in experiments) >= MIN_STAGES
    # Nothing to overlap once pandas is loaded; and a process running torch has thread pools
    # a fork should not copy.
    loaded = "pandas" in sys.modules or "torch" in sys.modules
    if not many or loaded or "fork" not in multiprocessing.get_all_start_methods():
        return lambda name: rows(store, name)
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    futures = {name: pool.submit(rows, store, name) for name in experiments}
    pool.shutdown(wait=False)  # the child exits once every experiment is read
    return lambda name: futures[name].result()
