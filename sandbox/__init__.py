"""A local fake of the upstream APIs (PokeAPI, a headless CMS, Semaphore CI) for tests,
demos and benchmarks, with fault injection to rehearse every way an upstream can fail."""

from sandbox.faults import KINDS
from sandbox.routes import ROUTES, SandboxRoute
from sandbox.server import SandboxServer

__all__ = ["KINDS", "ROUTES", "SandboxRoute", "SandboxServer"]
