"""Registers Helmsman's timetable with Airflow (the scheduler loads only registered ones)."""

from airflow.plugins_manager import AirflowPlugin

from helmsman.schedules import SlotCron


class HelmsmanPlugin(AirflowPlugin):
    name = "helmsman"
    timetables = [SlotCron]  # noqa: RUF012 - AirflowPlugin reads its registries off the class
