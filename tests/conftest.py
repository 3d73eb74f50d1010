"""For every suite: markers by folder, and Hypothesis' profile.

Order and randomness: ``./scripts/test`` runs the tests in an order shuffled by pytest-randomly
and seeds Hypothesis with the same number (``--randomly-seed=N --hypothesis-seed=N``, printed
first). ``VISREC_TEST_SEED=N ./scripts/test`` repeats a run: the same order, the same examples.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

SUITES = ("unit", "integration", "containers", "e2e")

# The profile every run uses: no example database (a failure reproduces from the seed alone,
# not from a .hypothesis folder that CI does not keep), no per-example deadline (a loaded
# 2-core runner is slow, not wrong), and the failing example printed as a reproduce blob.
settings.register_profile("visrec", database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("visrec")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test is marked with its suite (the folder under tests/): ``-m unit`` or
    ``-m "not containers"`` select by it, and ``--strict-markers`` refuses any other."""
    root = Path(__file__).parent
    for item in items:
        suite = item.path.relative_to(root).parts[0]
        if suite not in SUITES:
            raise pytest.UsageError(f"{item.nodeid}: tests live under tests/{{{','.join(SUITES)}}}")
        item.add_marker(getattr(pytest.mark, suite))


@pytest.fixture(scope="session")
def exported_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model exported once per run as version 1, for every suite that serves it
    (read it; ``copy_repository`` it before adding versions or changing what it serves)."""
    from visrec.export.cli import build_parser, run

    repository = tmp_path_factory.mktemp("exported-v1")
    assert run(build_parser().parse_args(["--target", "cpu", "--quiet",
                                          "--repository", str(repository)])) == 1
    return repository


def copy_repository(source: Path, target: Path) -> Path:
    """A model repository of one's own, from an exported one (files are small but for the
    ONNX models; a copy keeps the session's export untouched)."""
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    return target
