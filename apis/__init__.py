"""The API layer: one client per upstream, one configuration, one error model, one retry policy.

Callers use the shared clients (`get_client(PokeAPI)`) and catch `UpstreamError`
subclasses; nothing here returns a `requests` object.
"""

from apis.client import ApiClient, Payload
from apis.cms import CmsAPI
from apis.conditional import Validators
from apis.config import ApiSettings, get_settings
from apis.pokeapi import PokeAPI
from apis.registry import client_class, client_classes, get_client, reset_clients
from apis.semaphore import SemaphoreAPI

__all__ = [
    "ApiClient",
    "ApiSettings",
    "CmsAPI",
    "Payload",
    "PokeAPI",
    "SemaphoreAPI",
    "Validators",
    "client_class",
    "client_classes",
    "get_client",
    "get_settings",
    "reset_clients",
]
