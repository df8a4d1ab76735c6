"""The HTTP route table (http_api/routes.py): which route, name and version a request finds."""

from __future__ import annotations

import pytest

from mnist_serving_server.http_api import routes


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v2/models/mnist/infer", ("ModelInfer", "mnist", "")),
        ("POST", "/v2/models/mnist/versions/2/infer", ("ModelInfer", "mnist", "2")),
        ("GET", "/v2/models/mnist/infer", ("ModelInfer", "mnist", "")),  # 405, not 404
        ("GET", "/v2", ("ServerMetadata", "", "")),
        ("GET", "/v2/", ("ServerMetadata", "", "")),
        ("GET", "/v2/models/stats", ("ModelStatistics", "", "")),
        ("GET", "/v2/models/stats/stats", ("ModelStatistics", "stats", "")),
        ("GET", "/v2/models/mnist/versions/3", ("ModelMetadata", "mnist", "3")),
        ("GET", "/v2/models/", ("ModelMetadata", "", "")),
        ("POST", "/v2/repository/models/m/unload", ("RepositoryModelUnload", "m", "")),
        ("GET", "/", ("StaticFile", "", "")),
        ("GET", "/static/app.js", ("StaticFile", "app.js", "")),
        ("GET", "/static/", ("StaticFile", "", "")),
        # The page's files exist for GET only: another method finds no endpoint.
        ("POST", "/", None),
        ("POST", "/static/app.js", None),
        ("GET", "/v2/models", None),
        ("GET", "/v2/models/m/versions", None),
        ("GET", "/v2/health/live/", None),
        ("GET", "/static/a/b", None),
        ("GET", "v2", None),
        ("GET", "", None),
    ],
)
def test_a_request_finds_its_route(
    method: str, path: str, expected: tuple[str, str, str] | None
) -> None:
    found = routes.match(method, path)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        route, name, version = found
        assert (route.operation, name, version) == expected


def test_every_route_has_a_template_and_its_place() -> None:
    for at, route in enumerate(routes.ROUTES):
        assert route.index == at
        assert route.template.startswith("/")
        found = routes.match(route.method, route.template)
        assert found is not None
        assert found[0] is route
