"""The public surface is small on purpose: adding to it is a decision, so this test names it."""

import manifold


def test_public_names() -> None:
    assert sorted(manifold.__all__) == [
        "Config",
        "ConfigError",
        "Deployment",
        "ManifoldApp",
        "ManifoldError",
        "ServerSettings",
        "Timeouts",
        "__version__",
        "build_app",
        "load_config",
        "parse_config",
    ]
    for name in manifold.__all__:
        assert hasattr(manifold, name), name


def test_build_app_from_a_mapping() -> None:
    app = manifold.build_app(manifold.parse_config({"model_list": [], "server": {"prefixes": ["/v1", "/v3"]}}))
    assert isinstance(app, manifold.ManifoldApp)
    assert app.settings.prefixes == ["/v1", "/v3"]
