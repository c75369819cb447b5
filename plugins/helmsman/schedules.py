"""The crons of Helmsman's DAGs: a slot that passed while no run took it is skipped.

Airflow's ``catchup=False`` runs the latest slot that has passed as soon as it can: when a
DAG is first unpaused, after a scheduler outage, and after any backfill of older days (the
backfill becomes the "last automated run", so yesterday's slot looks missed). For a training
DAG each of those is an unplanned training and deploy at an arbitrary moment. ``SlotCron``
behaves like a cron daemon instead: the next slot to come, or one that passed less than
``GRACE`` ago (a scheduler or DAG-parse delay is not a missed slot). Backfills, which ask with
``catchup=True``, get every slot in their range as usual.

``HELMSMAN_CRON=off`` in the scheduler's environment stops the crons (asset events, manual
triggers and backfills still run): a test stack whose scenarios must not meet a cron slot.

Registered with Airflow by ``plugins/helmsman_plugin.py`` (a timetable class must be, for the
scheduler to load the DAGs that use it).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.trigger import CronTriggerTimetable

GRACE = dt.timedelta(minutes=10)


class SlotCron(CronTriggerTimetable):
    """A cron in UTC whose missed slots are skipped (see the module docstring)."""

    def __init__(self, cron: str) -> None:
        super().__init__(cron, timezone="UTC", run_immediately=GRACE)

    def __repr__(self) -> str:
        return f"SlotCron(expression={self._expression!r}, grace={GRACE})"

    @classmethod
    def deserialize(cls, data: dict[str, object]) -> SlotCron:
        return cls(str(data["expression"]))

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        if restriction.catchup:  # a backfill's range: every slot in it
            return super().next_dagrun_info(
                last_automated_data_interval=last_automated_data_interval,
                restriction=restriction,
            )
        if os.environ.get("HELMSMAN_CRON") == "off":
            return None
        # The slot that passed less than GRACE ago, else the next one (run_immediately=GRACE).
        start = self._calc_first_run()
        if last_automated_data_interval is not None:
            start = max(start, self._get_next(last_automated_data_interval.end))
        if restriction.earliest is not None:
            start = max(start, self._align_to_next(restriction.earliest))
        if restriction.latest is not None and restriction.latest < start:
            return None
        return DagRunInfo.interval(start - self._interval, start)
