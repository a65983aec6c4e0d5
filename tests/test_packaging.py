"""The package data a wheel ships: every ``package-data`` entry names a real package and matches files."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_names_existing_packages_and_files():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    assert package_data, "pyproject.toml lists no package data"
    for package, patterns in package_data.items():
        folder = ROOT / "src" / Path(*package.split("."))
        assert (folder / "__init__.py").is_file(), f"package-data names {package}, which is not a package"
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file, so a wheel would lack it"


def test_service_page_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"].get("cnnkit.deploy.serve", [])
    assert any(Path("page.html").match(pattern) for pattern in patterns)
