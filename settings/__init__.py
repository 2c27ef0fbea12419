"""The service's settings, read from the environment and validated at start.

Below the tasks and the worker (which read them) and above the API layer, the brokers and
redisconn (whose sections they compose).
"""

from settings.worker import WorkerSettings, get_worker_settings, setting_names

__all__ = ["WorkerSettings", "get_worker_settings", "setting_names"]
