"""The HTTP front's routes: one declarative table, read by the router and by the spans.

Each `Route` names its HTTP method, its path template (OpenTelemetry's `http.route`, so the
span of a request is `<METHOD> <template>`), the operation (the gRPC method name of the
same operation: the metrics' `method` label), the handler that answers it and whether it
needs a bearer token. `match` finds a path's route in one split of the path and a few
string comparisons: the candidates are the routes with as many segments, in table order
(a literal segment is listed before a variable one in the same place: `/v2/models/stats`
before `/v2/models/{model_name}`).

A path that matches a route with another method is answered 405 (with `Allow`), except for
the page's files, which exist for GET only: 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

MODEL_NAME: Final = "{model_name}"
MODEL_VERSION: Final = "{model_version}"
FILE: Final = "{file}"
_VARIABLES: Final = frozenset({MODEL_NAME, MODEL_VERSION, FILE})


class Auth(Enum):
    """Whether a route needs a bearer token (when the server has tokens)."""

    REQUIRED = "required"
    HEALTH = "health"  # exempt when the health service is (--auth-exempt-services)
    NEVER = "never"  # the page and its files


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: `method template`, answered by the handler named `handler`."""

    method: str
    template: str
    operation: str
    handler: str
    auth: Auth = Auth.REQUIRED
    also: tuple[str, ...] = ()
    """Other paths answered as this template (`/v2/` as `/v2`)."""
    other_methods_405: bool = True
    """Another method on this path: 405 with `Allow` (True) or no such endpoint (404)."""
    index: int = field(default=-1, compare=False)
    """Its place in ROUTES (set below): the app keeps its handlers in that order."""


_M = "/v2/models/" + MODEL_NAME
_V = "/versions/" + MODEL_VERSION

# The table. Order matters only between routes of as many segments (see the module's doc).
_TABLE: Final = (
    Route("POST", _M + "/infer", "ModelInfer", "infer"),
    Route("POST", _M + _V + "/infer", "ModelInfer", "infer"),
    Route("GET", "/v2/health/live", "ServerLive", "live", Auth.HEALTH),
    Route("GET", "/v2/health/ready", "ServerReady", "server_ready", Auth.HEALTH),
    Route("GET", "/v2", "ServerMetadata", "server_metadata", also=("/v2/",)),
    Route("GET", "/v2/models/stats", "ModelStatistics", "statistics"),
    Route("GET", _M, "ModelMetadata", "model_metadata"),
    Route("GET", _M + _V, "ModelMetadata", "model_metadata"),
    Route("GET", _M + "/ready", "ModelReady", "model_ready"),
    Route("GET", _M + _V + "/ready", "ModelReady", "model_ready"),
    Route("GET", _M + "/config", "ModelConfig", "model_config"),
    Route("GET", _M + _V + "/config", "ModelConfig", "model_config"),
    Route("GET", _M + "/stats", "ModelStatistics", "statistics"),
    Route("GET", _M + _V + "/stats", "ModelStatistics", "statistics"),
    Route("POST", "/v2/repository/index", "RepositoryIndex", "repository_index"),
    Route("POST", "/v2/repository/models/" + MODEL_NAME + "/load", "RepositoryModelLoad", "load"),
    Route(
        "POST", "/v2/repository/models/" + MODEL_NAME + "/unload", "RepositoryModelUnload", "unload"
    ),
    Route("GET", "/", "StaticFile", "index_page", Auth.NEVER, other_methods_405=False),
    Route(
        "GET", "/static/" + FILE, "StaticFile", "static_file", Auth.NEVER, other_methods_405=False
    ),
)
ROUTES: Final = tuple(replace(route, index=at) for at, route in enumerate(_TABLE))


class _Pattern:
    """One path a route answers, split: the literal segments to compare, and where the
    model's name (or the file's) and version are."""

    __slots__ = ("literals", "name_at", "route", "version_at")

    def __init__(self, route: Route, path: str) -> None:
        segments = path.split("/")
        self.route = route
        self.literals = tuple(
            (at, segment) for at, segment in enumerate(segments) if segment not in _VARIABLES
        )
        self.name_at = _position(segments, MODEL_NAME) or _position(segments, FILE)
        self.version_at = _position(segments, MODEL_VERSION)


def _position(segments: list[str], variable: str) -> int:
    """Where `variable` is in a path's segments; 0 (never a variable's place) when absent."""
    return segments.index(variable) if variable in segments else 0


def _patterns_by_length(routes: tuple[Route, ...]) -> dict[int, tuple[_Pattern, ...]]:
    by_length: dict[int, list[_Pattern]] = {}
    for route in routes:
        for path in (route.template, *route.also):
            by_length.setdefault(path.count("/") + 1, []).append(_Pattern(route, path))
    return {length: tuple(patterns) for length, patterns in by_length.items()}


_BY_LENGTH: Final = _patterns_by_length(ROUTES)


def match(method: str, path: str) -> tuple[Route, str, str] | None:
    """(route, model name or file name, model version) for a request, "" for a part its path
    does not have; None: no such endpoint. The route may want another method (405)."""
    parts = path.split("/")
    for pattern in _BY_LENGTH.get(len(parts), ()):
        for at, literal in pattern.literals:
            if parts[at] != literal:
                break
        else:
            route = pattern.route
            if method != route.method and not route.other_methods_405:
                return None
            name_at = pattern.name_at
            version_at = pattern.version_at
            return route, parts[name_at] if name_at else "", parts[version_at] if version_at else ""
    return None
