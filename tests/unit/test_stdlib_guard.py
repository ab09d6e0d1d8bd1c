"""platform/ is a src-layout root, not a package: `import platform` must stay the standard library."""

import subprocess
import sys
import sysconfig

from tests.conftest import REPO


def test_platform_has_no_init():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_import_platform_from_repo_root_is_stdlib():
    out = subprocess.run([sys.executable, "-c", "import platform, vwm; print(platform.__file__); "
                          "print(platform.python_version()); print(vwm.__file__)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    stdlib = sysconfig.get_paths()["stdlib"]
    assert out[0].startswith(stdlib), out[0]
    assert out[1].count(".") == 2
    assert out[2].startswith(str(REPO / "platform" / "vwm"))
