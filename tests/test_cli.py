import subprocess
import sys

from vitkit import __version__
from vitkit.cli import main


def test_presets_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "vit_b16" in out and "86,567,656" in out and "35.13" in out


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "vitkit", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "vitkit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "presets" in out.stdout
