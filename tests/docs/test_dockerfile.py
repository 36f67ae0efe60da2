"""The Dockerfile, checked without a container runtime (this project's machines have none).

Its instructions are parsed as Docker parses them; the build context is what .dockerignore lets
through; the image is emulated by copying that context as the COPY steps say, running the RUN
steps in a fresh virtualenv in place of the image's Python (so `pip install .` really installs
chimneyd and its dependencies from the package index), and running ENTRYPOINT + CMD from there:
refused without CHIMNEY_TOKEN, accepted on 0.0.0.0:7411 with it, and serving (on a loopback port
here) with the tokens it was given. What this cannot check: the base image itself and `USER`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chimney_client import Client, Denied
from tests.docs.mdcheck import ROOT
from tests.e2e.support import LineReader

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TOKEN, ADMIN = 'tok "quoted" \\ é', "admin-token"
pytestmark = pytest.mark.timeout(900)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern decides; `!` re-includes; a pattern
    that matches a directory matches everything below it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


@dataclass
class Image:
    root: Path  # stands for the image's file system
    venv: Path  # stands for the image's Python
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]


def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_the_dockerfile_has_the_expected_shape() -> None:
    steps = parsed()
    kinds = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert ("EXPOSE", "7411") in steps
    assert any(k == "RUN" and "pip install" in a and a.rstrip().endswith(" .") for k, a in steps)
    user = [a for k, a in steps if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the daemon must not run as root"
    for kind in ("ENTRYPOINT", "CMD"):
        assert kinds.count(kind) == 1
        json.loads(dict(steps)[kind])  # exec form: signals reach chimneyd, CMD args reach it
    assert json.loads(dict(steps)["CMD"]) == ["--listen", "0.0.0.0:7411"]


def test_the_build_context_holds_what_the_copies_need() -> None:
    patterns = ignore_patterns()
    for kind, args in parsed():
        if kind == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for unwanted in (".venv/bin/python", "tests/conftest.py", "chimneyd/__pycache__/x.pyc"):
        assert ignored(unwanted, patterns), f"{unwanted} would be sent to the build"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Run the Dockerfile's steps outside a container."""
    base = tmp_path_factory.mktemp("image")
    root, venv = base / "root", base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(base)
    patterns = ignore_patterns()
    workdir = root
    entrypoint: list[str] = []
    cmd: list[str] = []
    for kind, args in parsed():
        if kind == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
        elif kind == "WORKDIR":
            workdir = root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif kind == "COPY":
            *sources, dest = args.split()
            target = workdir / dest
            for source in sources:
                src = ROOT / source
                files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if ignored(rel, patterns):
                        continue
                    inside = f.relative_to(src) if src.is_dir() else Path(f.name)
                    out = (target / inside) if src.is_dir() or dest.endswith("/") else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, out)
        elif kind == "RUN":
            done = subprocess.run(
                ["/bin/sh", "-c", args],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"RUN {args}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        elif kind == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif kind == "CMD":
            cmd = json.loads(args)
    return Image(root, venv, env, entrypoint, cmd)


def run_image(img: Image, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*img.entrypoint, *args],
        env={**img.env, **env},
        cwd=img.root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pip_install_put_chimneyd_in_the_image(image: Image) -> None:
    assert (image.venv / "bin" / "chimneyd").exists()
    assert (image.venv / "bin" / "chimneyctl").exists()


def test_without_a_token_the_image_refuses_to_start(image: Image) -> None:
    done = run_image(image, image.cmd)
    assert done.returncode != 0
    assert "CHIMNEY_TOKEN" in done.stderr


def test_the_default_command_is_a_valid_configuration(image: Image) -> None:
    done = run_image(image, [*image.cmd, "--check-config"], CHIMNEY_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert effective["rpc"]["listen"] == ["0.0.0.0:7411"]
    assert effective["rpc"]["token"] == "<set>"
    # and without the token file the daemon itself refuses that address
    bare = subprocess.run(
        ["chimneyd", *image.cmd, "--check-config"],
        env=image.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == 2 and "rpc.token" in bare.stderr


@pytest.fixture
def running(image: Image) -> Iterator[str]:
    proc = subprocess.Popen(
        [*image.entrypoint, "--listen", "127.0.0.1:0"],
        env={**image.env, "CHIMNEY_TOKEN": TOKEN, "CHIMNEY_ADMIN_TOKEN": ADMIN},
        cwd=image.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    try:
        try:
            line = out.wait_for("chimneyd listening on ", 30)
        except (TimeoutError, EOFError):
            err.join()
            pytest.fail("the image's daemon did not start:\n" + "\n".join(err.lines[-20:]))
        yield line.split()[3]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_the_image_serves_with_its_tokens(running: str) -> None:
    with Client.connect(running) as anonymous:
        assert anonymous.ping() == "pong"
        with pytest.raises(Denied):
            anonymous.stack_info()
    with Client.connect(running, token=TOKEN) as user:
        assert user.stack_info()["rpc"]["auth"] is True
    with Client.connect(running, token=ADMIN) as admin:
        assert admin.tcp_list() == []
