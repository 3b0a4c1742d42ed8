"""The collection's image loop (fcnquant.calibrate.observe_loop): how a batch's observer tasks share the threads.
The statistics it gives, in line and overlapped, are checked in test_collect.py."""
from __future__ import annotations

import pytest

from fcnquant.calibrate.observe_loop import _share


def test_shared_tasks_all_run_and_raise_the_first_error_in_order():
    """Any thread may meet an error first; the one raised is that of the earliest task, as in a serial run."""
    from concurrent.futures import ThreadPoolExecutor

    ran = []

    def task(k, fail):
        def run():
            ran.append(k)
            if fail:
                raise ValueError(f"task {k}")
        return run

    with ThreadPoolExecutor(2) as pool:
        tasks = [(size, task(k, k in (1, 3))) for k, size in enumerate([5, 1, 9, 7])]  # 3 runs before 1
        with pytest.raises(ValueError, match="task 1"):
            _share(tasks, task("next", True), pool, 2)
        assert sorted(ran, key=str) == [0, 1, 2, 3, "next"]
        ran.clear()
        with pytest.raises(ValueError, match="task next"):  # reading the next batch comes after the observing
            _share([(1, task(0, False))], task("next", True), pool, 1)
