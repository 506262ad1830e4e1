"""The README's first run, exactly as written: `make run`'s `msgw serve` on the embedded default,
then every shell block of the first-run section, in a fresh folder. The message must reach the
capture outbox as CMS enveloped data (checked by `openssl cms`, an independent peer) and open
with the TEST doctor's key, the lab's signature verified. Also: busy ports are one line before
any banner, `--listen-base` moves every listener, and capture mode is the default's only."""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MSGW, ROOT, require_tool
from tests.e2e.harness import wait_port

README = ROOT / "README.md"
OUTBOX = Path("var/outbox/cabinet-parc.sante.test")


def first_run_section() -> str:
    """The README from the top down to the tests section (the part a newcomer runs first)."""
    text = README.read_text(encoding="utf-8")
    end = text.index("\n## Tests")
    return text[:end]


def shell_blocks(section: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```sh\n(.*?)^```$", section, re.S | re.M)]


def free_base(span: int = 5) -> int:
    """A base with `span` consecutive free loopback ports (tests run beside other gateways)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no 5 consecutive free ports")


def serve(folder: Path, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([MSGW, "serve", *args], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_readme_first_run_section_never_mentions_swaks() -> None:
    section = first_run_section()
    assert "swaks" not in section.lower()
    blocks = shell_blocks(section)
    assert blocks[0].strip() == "make run"
    # `make run` is `msgw serve` on the embedded default, which the test below starts the same way.
    assert re.search(r"^run: venv\n\t\$\(BIN\)/msgw serve\n", (ROOT / "Makefile").read_text(), re.M)


def test_readme_first_example_as_written_shows_a_signed_and_encrypted_message(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    blocks = shell_blocks(first_run_section())
    assert blocks[0].strip() == "make run" and len(blocks) >= 3
    # The README's commands name .venv/bin/msgw in the clone: the same program here.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "msgw").symlink_to(MSGW)
    base = free_base()
    proc = serve(tmp_path, "--listen-base", str(base), log=tmp_path / "serve.log")
    try:
        for port in range(base, base + 3):  # relay, submission, MLLP
            wait_port(port, timeout=60)
        outputs = []
        for block in blocks[1:]:
            out = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120, env=dict(os.environ, PATH=os.environ.get("PATH", "")))
            assert out.returncode == 0, f"{block}\n{out.stdout}\n{out.stderr}"
            outputs.append(out.stdout + out.stderr)
        captured = sorted((tmp_path / OUTBOX).glob("*.eml"))
        assert len(captured) == 1, captured
        # An independent peer reads what left: CMS enveloped data to the doctor, not the text.
        raw = captured[0].read_bytes()
        assert b"TEST: glycemia" not in raw and b"Content-Type: application/pkcs7-mime" in raw
        cms = subprocess.run([openssl, "cms", "-cmsout", "-print", "-in", str(captured[0]), "-inform", "SMIME"],
                             capture_output=True, text=True, timeout=60)
        assert cms.returncode == 0, cms.stderr
        assert "contentType: pkcs7-envelopedData" in cms.stdout
        assert "JEAN TEST-DUPONT" in cms.stdout or "TEST AC IGC-SANTE ELEMENTAIRE PERSONNES" in cms.stdout
        # The decrypt block: the text inside, and the lab's signature verified.
        opened = outputs[-1]
        assert "TEST: glycemia 5.4 mmol/l. No real patient." in opened
        assert "Subject: TEST result for Dr TEST-DUPONT" in opened
        assert "signature OK: CN=TEST LABO MESSAGERIE SIGNATURE" in opened
        # The captured file is the prepared copy's bytes, as they would have been sent.
        envelope = captured[0].with_name(captured[0].name.removesuffix(".eml") + ".envelope.json")
        assert '"jean.test-dupont@cabinet-parc.sante.test"' in envelope.read_text()

        # The banner: capture mode said loudly, the outbox named, and its stdlib SMTP one-liner
        # (STARTTLS + AUTH on the submission port it listens on) captures a second message.
        banner = (tmp_path / "serve.log").read_text()
        assert "nothing leaves this machine" in banner and "var/outbox/<domain>/" in banner
        assert f"submission: 127.0.0.1:{base + 1}" in banner and f"relay:      127.0.0.1:{base}" in banner
        one_liner = re.search(r"try:\s+(python3 -c .*)", banner)
        assert one_liner, banner
        sent = subprocess.run(["bash", "-c", one_liner.group(1)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        while len(list((tmp_path / OUTBOX).glob("*.eml"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list((tmp_path / OUTBOX).glob("*.eml"))) == 2
    finally:
        stop(proc)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_one_line_before_any_banner(tmp_path: Path, workers: str) -> None:
    base = free_base()
    with socket.socket() as other:
        other.bind(("127.0.0.1", base + 1))  # the submission port of that base
        other.listen()
        out = subprocess.run([MSGW, "serve", "--listen-base", str(base), "--workers", workers], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith(f"msgw: port 127.0.0.1:{base + 1} (submission) is already in use: stop the other program")
    suggested = re.search(r"run msgw serve --listen-base (\d+) \(ports (\d+)-(\d+)\), or give a config with -c$", line)
    assert suggested, line
    assert int(suggested.group(1)) != base and int(suggested.group(3)) == int(suggested.group(1)) + 4
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr and "embedded default" not in line


def test_listen_base_moves_every_listener(tmp_path: Path) -> None:
    base = free_base()
    proc = serve(tmp_path, "--listen-base", str(base), "--workers", "1", log=tmp_path / "serve.log")
    try:
        for port in (base, base + 1, base + 2):  # relay, submission, MLLP
            wait_port(port, timeout=60)
        banner = (tmp_path / "serve.log").read_text()
        assert f"MLLP:       127.0.0.1:{base + 2}" in banner
    finally:
        stop(proc)


def test_listen_base_with_a_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("")
    out = subprocess.run([MSGW, "serve", "-c", str(config), "--listen-base", "12500"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--listen-base moves the embedded default's ports; with --config the ports are the config's own" \
        in out.stderr


def test_capture_is_refused_in_a_config_file_and_announced_by_check(tmp_path: Path) -> None:
    subprocess.run([MSGW, "init"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    checked = subprocess.run([MSGW, "check"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "delivery.capture: CAPTURE MODE: mail for other domains is written to var/outbox/<domain>/ — " \
           "nothing leaves this machine" in checked.stderr
    # The same default written out as a config file: capture is refused there, naming the key.
    default = (ROOT / "gateway" / "defaults" / "default.toml").read_text(encoding="utf-8")
    assert '\ncapture = "var/outbox"\n' in default
    (tmp_path / "mine.toml").write_text(default, encoding="utf-8")
    out = subprocess.run([MSGW, "check", "-c", "mine.toml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "mine.toml: delivery.capture: capture mode (mail written to a folder, nothing leaves this machine) " \
           "is for the embedded default only" in out.stderr
    # Without the key that same file is accepted and captures nothing.
    (tmp_path / "mine.toml").write_text(default.replace('\ncapture = "var/outbox"\n', "\n"), encoding="utf-8")
    out = subprocess.run([MSGW, "check", "-c", "mine.toml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CAPTURE" not in out.stderr


def test_every_serve_option_has_help() -> None:
    out = subprocess.run([MSGW, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    options = out.stdout.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + options.strip("\n"))
    for entry in filter(str.strip, entries):
        flag, _, rest = entry.strip().partition("  ")
        assert rest.strip(), f"no help for {flag}: {shlex.quote(entry)}"
