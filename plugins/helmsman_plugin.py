"""Registers Helmsman with Airflow: its timetable (the scheduler loads only registered ones)
and the API server's check of a trigger's conf (an unknown key or a future date is a 400)."""

from airflow.plugins_manager import AirflowPlugin

from helmsman.runconf import ConfCheckMiddleware
from helmsman.schedules import SlotCron


class HelmsmanPlugin(AirflowPlugin):
    name = "helmsman"
    # AirflowPlugin reads its registries off the class.
    timetables = [SlotCron]  # noqa: RUF012
    fastapi_root_middlewares = [  # noqa: RUF012
        {"middleware": ConfCheckMiddleware, "name": "Helmsman conf check"}
    ]
