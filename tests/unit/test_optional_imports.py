"""The server's processes keep transformers from importing torchvision and sklearn (start-up time)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, sys
    import sglserve.launch_server  # what the launcher and every spawned child run first
    from transformers import LlamaConfig  # the config import that pulled torchvision.io in
    from transformers.utils import import_utils
    print(json.dumps({"torchvision": import_utils.is_torchvision_available(),
                      "sklearn": import_utils.is_sklearn_available(),
                      "imported": sorted(m for m in ("torchvision", "sklearn") if sys.modules.get(m) is not None)}))
""")


@pytest.fixture
def fake_packages(tmp_path):
    """Installed stand-ins for torchvision and sklearn that fail loudly when imported."""
    for name in ("torchvision", "sklearn"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise RuntimeError('{name} was imported')\n")
    return tmp_path


def _probe(fake_packages, **env) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(fake_packages), *sys.path])
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path, **env})


def test_server_processes_hide_torchvision_and_sklearn(fake_packages):
    out = _probe(fake_packages)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torchvision": False, "sklearn": False, "imported": []}


def test_without_it_a_config_import_reaches_torchvision(fake_packages):
    """SGLSERVE_KEEP_OPTIONAL_IMPORTS=1: transformers imports the installed torchvision for LlamaConfig
    (the fake one raises), which is the start-up cost the default avoids."""
    pytest.importorskip("PIL")  # transformers imports torchvision only where PIL is installed too
    out = _probe(fake_packages, SGLSERVE_KEEP_OPTIONAL_IMPORTS="1")
    assert out.returncode != 0 and "torchvision was imported" in out.stderr
