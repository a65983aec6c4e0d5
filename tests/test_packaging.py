"""The package data a wheel ships: every ``package-data`` entry names a real package and matches files."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_data() -> dict[str, list[str]]:
    """``[tool.setuptools.package-data]`` of pyproject.toml (read by hand: tomllib is missing on Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    entries = re.findall(r'^"([\w.]+)"\s*=\s*(\[.*\])\s*$', section, flags=re.MULTILINE)
    return {package: json.loads(patterns) for package, patterns in entries}


def test_package_data_names_existing_packages_and_files():
    entries = package_data()
    assert entries, "pyproject.toml lists no package data"
    for package, patterns in entries.items():
        folder = ROOT / "src" / Path(*package.split("."))
        assert (folder / "__init__.py").is_file(), f"package-data names {package}, which is not a package"
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file, so a wheel would lack it"


def test_service_page_is_package_data():
    patterns = package_data().get("cnnkit.deploy.serve", [])
    assert any(Path("page.html").match(pattern) for pattern in patterns)


def test_reliability_page_names_only_tests_that_exist():
    page = (ROOT / "docs" / "reliability.md").read_text()
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(), flags=re.MULTILINE))
        defined.add(path.name)
    named = set(re.findall(r"\btest_\w+(?:\.py)?", page))
    assert not named - defined, f"docs/reliability.md names tests that do not exist: {sorted(named - defined)}"
