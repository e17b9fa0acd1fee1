"""Issue 29: the README's module map names every module of the package, and nothing that is gone."""

import re
import subprocess

from tests.helpers import REPO


def test_the_readme_module_map_matches_the_package():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    files = subprocess.run(["git", "ls-files", "src"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    modules = {p.rsplit("/", 1)[-1][:-3] for p in files.split() if p.endswith(".py") and not p.endswith("__init__.py")}
    packages = {p.split("/")[2] for p in files.split() if p.count("/") > 2}
    named = set(re.findall(r"`(?:[\w/]+/)?(\w+)(?:\.py)?`", layout))
    assert modules - named == set(), f"modules the README's Layout does not name: {sorted(modules - named)}"
    for package in packages:
        assert f"src/nemotron/{package}/" in layout, package
    shown = set(re.findall(r"`(\w+)` \(", layout))  # `name` (what it owns): each such name is a module here
    assert shown - modules == set(), f"the Layout names modules that are gone: {sorted(shown - modules)}"
