"""scripts/gpu-checks.sh, the part that runs without a GPU: its parts carried one per call,
joined and checked, the wheels installed without network, and the user's own environment
left alone (docs/gpu.md, "A lent GPU machine without network"). Its steps on a GPU are
rehearsed by hand (the page says how)."""

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-checks.sh"


def _wheel() -> bytes:
    """A real, tiny wheel: the package ``wsdemo`` with ``VALUE = 42``."""
    files = {
        "wsdemo/__init__.py": "VALUE = 42\n",
        "wsdemo-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: wsdemo\nVersion: 0.1\n",
        "wsdemo-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "wsdemo-0.1.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in {**files, "wsdemo-0.1.dist-info/RECORD": record}.items():
            z.writestr(name, text)
    return buf.getvalue()


def _kit(tmp: Path) -> tuple[bytes, str]:
    """The kit's archive (``wheels/`` with the tiny wheel) and its sha256."""
    buf, whl = io.BytesIO(), _wheel()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("wheels/wsdemo-0.1-py3-none-any.whl")
        info.size = len(whl)
        tar.addfile(info, io.BytesIO(whl))
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, repo / "scripts" / SCRIPT.name)
    return repo


def _call(repo: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "KIT_STASH": str(tmp / "stash"),
        "SITE": str(tmp / "site"),
        "OUT": str(tmp / "out"),
        "BASE_PYTHON": sys.executable,
    }
    return subprocess.run(["bash", str(repo / "scripts" / SCRIPT.name), *args], cwd=repo, env=env, capture_output=True, text=True)


def _carry(repo: Path, name: str, data: bytes) -> None:
    """What one call carries: ``.gpu-kit/<part>`` only (the earlier parts are not there)."""
    shutil.rmtree(repo / ".gpu-kit", ignore_errors=True)
    (repo / ".gpu-kit" / name).mkdir(parents=True)
    (repo / ".gpu-kit" / name / f"kit.tar.{name}").write_bytes(data)


def test_without_a_verb_it_prints_its_usage_and_writes_nothing(tmp_path):
    repo = _repo(tmp_path)
    r = _call(repo, tmp_path)
    assert r.returncode == 2 and "stash" in r.stdout and "scale-8b" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"] and sorted(p.name for p in repo.iterdir()) == ["scripts"]


def test_parts_carried_one_per_call_are_joined_checked_and_installed(tmp_path):
    data, sha = _kit(tmp_path)
    repo, half = _repo(tmp_path), len(data) // 2
    _carry(repo, "part1", data[:half])
    assert _call(repo, tmp_path, "stash").returncode == 0
    _carry(repo, "part2", data[half:])
    (repo / ".gpu-kit" / "kit.sha256").write_text(sha + "\n")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")  # the user's own environment
    r = _call(repo, tmp_path, "run", "tests")
    log = (tmp_path / "out" / "gpu-checks.log").read_text()
    assert "installed 1 wheels" in log, log + r.stderr
    assert (tmp_path / "site" / "wsdemo" / "__init__.py").read_text() == "VALUE = 42\n"
    # the user's environment is left as it was, and nothing ran
    assert r.returncode == 1 and "leaves it alone" in log and not (repo / ".venv" / "bin").exists()
    assert not (tmp_path / "out" / "tests.txt").exists()


def test_a_missing_part_is_named_before_anything_is_installed(tmp_path):
    data, sha = _kit(tmp_path)
    repo = _repo(tmp_path)
    _carry(repo, "part2", data[len(data) // 2 :])  # part 1 was never stashed
    (repo / ".gpu-kit" / "kit.sha256").write_text(sha + "\n")
    r = _call(repo, tmp_path, "run")
    log = (tmp_path / "out" / "gpu-checks.log").read_text()
    assert r.returncode == 1 and f"not {sha}: a part is missing" in log and "kit.tar.part2" in log
    assert not (tmp_path / "site").exists() and not (repo / ".venv").exists()


def test_the_kit_never_replaces_a_folder_that_is_not_a_kit(tmp_path):
    """``gpu-kit.sh`` deletes its old kit before writing the new one: a ``KIT_DIR`` without a
    kit's MANIFEST is refused before anything is downloaded or removed."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-kit.sh")],
        env={"PATH": "/usr/bin:/bin", "KIT_DIR": str(folder)},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "is not a kit" in r.stderr
    assert [p.name for p in folder.iterdir()] == ["precious.txt"]
