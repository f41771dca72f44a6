# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a playbook's wall time goes, task by task, for tests/bench/bench_fleet.py."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: wall time of every task, written as JSON
description:
  - >-
    Adds up, per task name (role, then task), the wall time from the start of the task to the start
    of the next one (the linear strategy runs a task on all hosts of the batch before the next) and
    writes the totals, in order of first appearance, to the file named by E(GPUVIRT_TASK_TIMES).
options: {}
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._times = {}
        self._counts = {}
        self._current = None
        self._started = None

    def _close(self):
        if self._current is not None:
            self._times[self._current] = self._times.get(self._current, 0.0) + time.monotonic() - self._started
            self._counts[self._current] = self._counts.get(self._current, 0) + 1
        self._current = None

    def _open(self, name):
        self._close()
        self._current = name
        self._started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._open(task.get_name().strip() or task.action)

    def v2_playbook_on_handler_task_start(self, task):
        self._open(task.get_name().strip() or task.action)

    def v2_playbook_on_play_start(self, play):
        self._close()

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("GPUVIRT_TASK_TIMES")
        if path:
            with open(path, "w") as handle:
                json.dump([{"task": name, "seconds": seconds, "runs": self._counts[name]}
                           for name, seconds in self._times.items()], handle)
