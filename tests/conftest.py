"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ray: needs the ray package and starts a local Ray instance (~10-20 s); deselect with -m 'not ray'")
