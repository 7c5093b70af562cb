"""The review app's surface (issue 34): user-derived names rendered as text, never markup; a loud warning
and an optional login when it binds beyond loopback; uploads removed when it exits. Fast: no model, no
browser (tests/test_review_app_browser.py drives the real app in Chromium)."""
from __future__ import annotations

import html
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from wildreid.identification.review import serving
from wildreid.identification.review.scoring import RankedIndividual, Ranking
from wildreid.identification.review.session import Candidate, Proposal
from wildreid.identification.review.ui import describe_candidate, describe_suggestion, literal

HOSTILE = "<img src=x onerror=alert(1)>"
NAMES = [HOSTILE, "zebra/**bold** [link](javascript:alert(1))", "$$x^2$$ `code` # heading", 'a"b\'c&amp;\nd']


def _rendered(markdown: str) -> str:
    """The HTML a CommonMark renderer that passes raw HTML through (as Gradio's Markdown does) makes."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark", {"html": True}).render(markdown)


def _proposal(identity: str, suggest_new: bool | None = False) -> Proposal:
    picture = np.zeros((4, 8, 3), dtype=np.uint8)
    candidate = Candidate(identity=identity, probability=0.9, score=0.8, method="fusion", image_id=identity + ".jpg",
                          photo=0, global_score=0.8, verified_matches=3, pair=picture, explanation=picture,
                          note=f"gallery image unavailable ({identity}.jpg: no such file)")
    ranking = Ranking("fusion", [RankedIndividual(identity, 0.8, 0.9, 0, 0, 0.8)], suggest_new,
                      None if suggest_new is None else 0.5, 0.8, None)
    return Proposal("p1", [], None, np.zeros((1, 4), np.float32), [], ranking, [candidate])


@pytest.mark.parametrize("name", NAMES)
def test_identity_names_are_text_in_candidate_and_suggestion_text(name):
    for suggest_new in (False, None):
        proposal = _proposal(name, suggest_new)
        for markdown in (describe_candidate(1, proposal.candidates[0]), describe_suggestion(proposal)):
            rendered = _rendered(markdown).replace("<code>wildreid calibrate</code>", "")  # the app's own
            # Only the app's own markup: one bold name, the image id in italics, line breaks; no <img>, link, code.
            assert set(re.findall(r"<([a-z0-9]+)", rendered)) <= {"p", "strong", "em", "br"}, rendered
            assert rendered.count("<strong>") == 1 and rendered.count("<em>") <= 1, rendered
            assert " ".join(name.splitlines()) in html.unescape(rendered)  # shown as typed (line breaks as spaces)


def test_literal_keeps_plain_names_readable_and_escapes_every_markup_character():
    assert literal("zebra/Stripes 7") == "zebra/Stripes 7"
    assert literal("Ñandú 2") == "Ñandú 2"
    assert literal(HOSTILE) == "&#60;img src&#61;x onerror&#61;alert&#40;1&#41;&#62;"
    escaped = literal("".join(chr(c) for c in range(32, 127)))
    assert not set(escaped) & set("<>\"'`*_[]()!|~{}$\\")
    assert html.unescape(escaped) == "".join(map(chr, range(32, 127)))


@pytest.mark.parametrize("host, exposed", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                           ("127.0.0.2", False), ("0.0.0.0", True), ("::", True),
                                           ("192.168.1.20", True), ("reviewer-laptop", True)])
def test_only_loopback_hosts_are_served_without_a_warning(host, exposed):
    warning = serving.exposure_warning(host, 7860, None)
    assert (warning is not None) == exposed
    if exposed:
        assert "WARNING" in warning and "--auth user:password" in warning and serving.AUTH_ENV in warning
        with_login = serving.exposure_warning(host, 7860, ("reviewer", "secret"))
        assert "login is required" in with_login and "secret" not in with_login


@pytest.mark.parametrize("value, problem", [("nocolon", "has no ':'"), ("", "it is empty"),
                                            (":secret", "user name is empty"), ("reviewer:", "password is empty")])
def test_a_malformed_login_is_refused_before_anything_loads(value, problem, capsys, monkeypatch):
    from wildreid.identification.cli import main

    monkeypatch.delenv(serving.AUTH_ENV, raising=False)
    assert main(["app", "--gallery", "/nonexistent-gallery", "--auth", value]) == 2
    error = capsys.readouterr().err
    assert "error: --auth must be user:password" in error and problem in error
    assert "nonexistent-gallery" not in error and ("secret" not in error)  # checked first; the password never echoed
    monkeypatch.setenv(serving.AUTH_ENV, value)
    assert main(["app", "--gallery", "/nonexistent-gallery"]) == 2
    assert f"error: {serving.AUTH_ENV} must be user:password" in capsys.readouterr().err


def test_parse_auth_splits_at_the_first_colon_and_the_flag_wins_over_the_environment():
    assert serving.parse_auth(" reviewer :pa:ss word") == ("reviewer", "pa:ss word")
    assert serving.resolve_auth(None, {}) is None
    assert serving.resolve_auth(None, {serving.AUTH_ENV: "a:b"}) == ("a", "b")
    assert serving.resolve_auth("c:d", {serving.AUTH_ENV: "a:b"}) == ("c", "d")


class _StubApp:
    """Stands in for the Blocks: records how it was launched and writes an "upload" where Gradio would."""

    def __init__(self):
        self.kwargs, self.upload = None, None

    def launch(self, **kwargs):
        from gradio.utils import get_upload_folder

        self.kwargs = kwargs
        self.upload = Path(get_upload_folder()) / "0123abcd" / "query.jpg"
        self.upload.parent.mkdir(parents=True)
        self.upload.write_bytes(b"photo")


def test_the_app_command_warns_beyond_loopback_passes_the_login_and_removes_uploads_at_exit(monkeypatch, capsys):
    pytest.importorskip("gradio")
    from wildreid.identification import review
    from wildreid.identification.cli import main
    from wildreid.identification.review import ui

    stub = _StubApp()
    monkeypatch.setattr(review, "open_session", lambda *args, **kwargs: SimpleNamespace(max_upload_bytes=10))
    monkeypatch.setattr(ui, "build_app", lambda session: stub)
    monkeypatch.delenv(serving.AUTH_ENV, raising=False)
    temp_before = os.environ.get("GRADIO_TEMP_DIR")

    assert main(["app", "--gallery", "g", "--host", "0.0.0.0"]) == 0
    error = capsys.readouterr().err
    assert "WARNING: the review app listens on all network interfaces (0.0.0.0)" in error
    assert "No login is required" in error
    assert stub.kwargs["server_name"] == "0.0.0.0" and stub.kwargs["auth"] is None
    assert stub.upload.name == "query.jpg" and not stub.upload.exists()  # removed with its folder at exit
    assert not stub.upload.parent.parent.exists() and stub.upload.parent.parent.name.startswith("wildreid-app-")
    assert os.environ.get("GRADIO_TEMP_DIR") == temp_before

    monkeypatch.setenv(serving.AUTH_ENV, "reviewer:s3cret")
    assert main(["app", "--gallery", "g", "--host", "0.0.0.0"]) == 0
    assert stub.kwargs["auth"] == ("reviewer", "s3cret") and "login is required" in capsys.readouterr().err
    assert main(["app", "--gallery", "g"]) == 0  # loopback: no warning
    assert "WARNING" not in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_real_app_requires_the_login_and_its_uploads_are_gone_after_sigterm(tmp_path):
    """Real Gradio server: an upload lands in the app's own folder, needs the login, and is deleted when the
    app is stopped by SIGTERM (as `kill`, systemd or a Space stop it)."""
    pytest.importorskip("gradio")
    import httpx

    from wildreid.identification.review.ui import launch

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("something else handles SIGTERM in this process; the app leaves such a handler alone")

    session = SimpleNamespace(top_k=1, species=["zebra"], gallery_dir=tmp_path / "gallery", revision="r1",
                              max_upload_bytes=1 << 20,
                              gallery=SimpleNamespace(metadata=pd.DataFrame({"identity": ["zebra/001"]})))
    port, seen, failures = _free_port(), {}, []
    base = f"http://127.0.0.1:{port}"

    def client():
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            files = {"files": ("query.jpg", b"photo bytes", "image/jpeg")}
            with httpx.Client(base_url=base, timeout=30) as http:
                seen["anonymous"] = http.post("/gradio_api/upload", files=files).status_code
                seen["login"] = http.post("/login", data={"username": "reviewer", "password": "s3cret"}).status_code
                answer = http.post("/gradio_api/upload", files=files)
                seen["upload"] = Path(answer.json()[0])
                seen["folder"] = os.environ.get("GRADIO_TEMP_DIR")
                seen["stored"] = seen["upload"].read_bytes()
        except Exception as error:  # reported by the test, after the server has stopped
            failures.append(error)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        launch(session, host="127.0.0.1", port=port, auth=("reviewer", "s3cret"), quiet=True)
    except KeyboardInterrupt:  # SIGTERM before the server was up: fail this test, not the whole run
        pytest.fail(f"the app was stopped before it served: {failures}")
    thread.join(timeout=30)
    assert not failures, failures
    assert seen["anonymous"] == 401 and seen["login"] == 200 and seen["stored"] == b"photo bytes"
    assert Path(seen["folder"]).name.startswith("wildreid-app-") and Path(seen["folder"]) in seen["upload"].parents
    assert not seen["upload"].exists() and not Path(seen["folder"]).exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored
