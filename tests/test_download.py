"""The weights downloader against a local HTTP server (GitHub-style files + a Hub resolve endpoint)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save as save_safetensors

from faramir import download as dl
from faramir.errors import WeightsError, WeightsNotFound
from faramir.weights import (
    AESTHETIC_FILE,
    ARNIQA_FILE,
    FARAMIR_FILE,
    SIGLIP_FILE,
    WEIGHT_FILES,
    missing_files,
)

HUB_PATH = f"/{dl.HF_REPO_ID}/resolve/main/{dl.HF_FILENAME}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PTH_FILES = (FARAMIR_FILE, ARNIQA_FILE, AESTHETIC_FILE)


def _pth_bytes(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    torch.save({"w": torch.randn(64, 64, generator=g), "b": torch.zeros(64)}, buf)
    return buf.getvalue()


def _safetensors_bytes() -> bytes:
    return save_safetensors({"trunk.w": torch.arange(4096, dtype=torch.float32).reshape(64, 64)})


def _malicious_pickle(marker: Path) -> bytes:
    """Protocol-0 pickle of `os.system('touch MARKER')`, hand-assembled: never unpickled here."""
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."


@dataclass
class Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    short: set[str] = field(default_factory=set)  # paths that send half of what Content-Length says
    log: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request

    def gh_url(self, name: str) -> str:
        return f"{self.base}/gh/{name}"

    def gh_urls(self) -> dict[str, str]:
        return {name: self.gh_url(name) for name in PTH_FILES}

    def requests(self, path: str) -> list[str]:
        return [method for method, p in self.log if p == path]


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _respond(self, with_body: bool) -> None:
            server.log.append((self.command, self.path))
            body = server.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            # What huggingface_hub's HEAD needs from a Hub endpoint (harmless for the other paths).
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.end_headers()
            if with_body:
                self.wfile.write(body[: len(body) // 2] if self.path in server.short else body)

        def do_GET(self) -> None:
            self._respond(with_body=True)

        def do_HEAD(self) -> None:
            self._respond(with_body=False)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing reaches the real home, the real Hub cache or a configured mirror."""
    for var in (dl.WEIGHTS_ENV, dl.MIRROR_ENV, "HF_ENDPOINT", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(dl.CACHE_ENV, str(tmp_path / "faramir-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # huggingface_hub reads these once at import, so patch the constants, not the environment.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    srv = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _handler(srv)
    httpd.daemon_threads = True
    for i, name in enumerate(PTH_FILES):
        srv.files[f"/gh/{name}"] = _pth_bytes(i)
        srv.files[f"/mirror/{name}"] = _pth_bytes(i)
    srv.files[HUB_PATH] = _safetensors_bytes()
    srv.files[f"/mirror/{SIGLIP_FILE}"] = _safetensors_bytes()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _part_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def _fetch_all(server: Server, dest: Path, **kwargs) -> list[Path]:
    return dl.download_weights(dest, urls=server.gh_urls(), hf_endpoint=server.base, **kwargs)


def test_downloads_all_files_with_progress(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl, "CHUNK_BYTES", 1024)  # several progress reports per small file
    calls: dict[str, list[tuple[int, int | None]]] = {}
    dest = tmp_path / "weights"

    def progress(name: str, done: int, total: int | None) -> None:
        calls.setdefault(name, []).append((done, total))

    written = _fetch_all(server, dest, progress=progress)

    assert written == [dest / name for name in WEIGHT_FILES]
    assert missing_files(dest) == []
    for name in PTH_FILES:
        assert (dest / name).read_bytes() == server.files[f"/gh/{name}"]
    assert (dest / SIGLIP_FILE).read_bytes() == server.files[HUB_PATH]
    for name in WEIGHT_FILES:
        size = (dest / name).stat().st_size
        done = [d for d, _ in calls[name]]
        assert done == sorted(done), f"{name}: progress went backwards: {done}"
        assert calls[name][-1] == (size, size)
    assert len(calls[FARAMIR_FILE]) > 5
    assert _part_files(dest) == []
    # The trunk went through huggingface_hub's resolve scheme and landed in the (isolated) Hub cache.
    assert "GET" in server.requests(HUB_PATH) and "HEAD" in server.requests(HUB_PATH)
    assert list((tmp_path / "hf-home" / "hub").glob("models--timm--*/blobs/*"))


def test_only_missing_fetches_only_what_is_absent(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    _fetch_all(server, dest)
    (dest / ARNIQA_FILE).unlink()
    (dest / SIGLIP_FILE).unlink()
    server.log.clear()

    written = _fetch_all(server, dest)

    assert written == [dest / SIGLIP_FILE, dest / ARNIQA_FILE]
    assert server.log == [("GET", f"/gh/{ARNIQA_FILE}")]  # the trunk came from the Hub cache, offline
    assert missing_files(dest) == []
    assert _fetch_all(server, dest) == []
    assert len(server.log) == 1


def test_only_missing_false_refetches_everything(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    _fetch_all(server, dest)
    server.log.clear()

    written = _fetch_all(server, dest, only_missing=False)

    assert written == [dest / name for name in WEIGHT_FILES]
    fetched = sorted(p for m, p in server.log if m == "GET")
    assert fetched == sorted([*(f"/gh/{n}" for n in PTH_FILES), HUB_PATH])


def test_short_body_leaves_no_file(server: Server, tmp_path: Path) -> None:
    server.short.add(f"/gh/{FARAMIR_FILE}")
    dest = tmp_path / "weights"

    with pytest.raises(dl.DownloadError) as info:
        _fetch_all(server, dest)

    message = str(info.value)
    assert "\n" not in message
    assert FARAMIR_FILE in message and "stopped at" in message
    assert not (dest / FARAMIR_FILE).exists()
    assert _part_files(dest) == []


def test_failed_refetch_keeps_the_old_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    _fetch_all(server, dest)
    before = (dest / FARAMIR_FILE).read_bytes()
    server.files[f"/gh/{FARAMIR_FILE}"] = _pth_bytes(99)
    server.short.add(f"/gh/{FARAMIR_FILE}")

    with pytest.raises(dl.DownloadError):
        _fetch_all(server, dest, only_missing=False)

    assert (dest / FARAMIR_FILE).read_bytes() == before
    assert _part_files(dest) == []


def test_http_error_is_one_line(server: Server, tmp_path: Path) -> None:
    urls = {**server.gh_urls(), ARNIQA_FILE: f"{server.base}/nowhere/{ARNIQA_FILE}"}
    dest = tmp_path / "weights"

    with pytest.raises(dl.DownloadError, match=r"ARNIQA\.pth: .*HTTP 404") as info:
        dl.download_weights(dest, urls=urls, hf_endpoint=server.base)

    assert "\n" not in str(info.value)
    assert (dest / FARAMIR_FILE).is_file()  # files finished before the failure are kept
    assert not (dest / ARNIQA_FILE).exists()


def test_malicious_pickle_is_refused_and_deleted(server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    server.files[f"/gh/{AESTHETIC_FILE}"] = _malicious_pickle(marker)
    dest = tmp_path / "weights"

    with pytest.raises(WeightsError) as info:
        _fetch_all(server, dest)

    message = str(info.value)
    assert not isinstance(info.value, dl.DownloadError)
    assert "\n" not in message
    assert str(dest / AESTHETIC_FILE) in message and "refused" in message
    assert not (dest / AESTHETIC_FILE).exists()
    assert _part_files(dest) == []
    assert not marker.exists()  # the payload never ran


def test_explicit_incomplete_dir_is_never_downloaded_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "mine"
    named.mkdir()
    (named / ARNIQA_FILE).write_bytes(_pth_bytes(0))
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9/")  # would fail loudly if it were used

    for how in ("argument", "env"):
        if how == "env":
            monkeypatch.setenv(dl.WEIGHTS_ENV, str(named))
        with pytest.raises(WeightsNotFound) as info:
            dl.resolve_weights_dir(named if how == "argument" else None)
        message = str(info.value)
        assert "\n" not in message
        for name in (FARAMIR_FILE, SIGLIP_FILE, AESTHETIC_FILE):
            assert name in message
        assert "download failed" not in message
    assert sorted(p.name for p in named.rglob("*")) == [ARNIQA_FILE]


def test_explicit_complete_dir_is_returned(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    _fetch_all(server, dest)
    server.log.clear()
    assert dl.resolve_weights_dir(dest) == dest
    assert server.log == []


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every pause a download takes (time.sleep): failing fast means never waiting to retry."""
    seen: list[float] = []
    real = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (seen.append(s), real(min(s, 0.01)))[1])
    return seen


def test_default_dir_with_unreachable_source_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int, waits: list[float]
) -> None:
    monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{closed_port}/weights")

    with pytest.raises(WeightsNotFound) as info:
        dl.resolve_weights_dir()

    message = str(info.value)
    assert sum(waits) < 1  # no backoff before giving up
    assert "\n" not in message
    assert "download failed" in message
    assert str(dl.default_weights_dir()) in message
    for name in WEIGHT_FILES:
        assert name in message
    assert missing_files(dl.default_weights_dir()) == list(WEIGHT_FILES)


def test_unreachable_hub_fails_fast(server: Server, tmp_path: Path, closed_port: int, waits: list[float]) -> None:
    with pytest.raises(dl.DownloadError, match=r"model\.safetensors: .*huggingface_hub failed") as info:
        dl.download_weights(
            tmp_path / "w", urls=server.gh_urls(), hf_endpoint=f"http://127.0.0.1:{closed_port}"
        )
    assert sum(waits) < 1  # huggingface_hub's retries with backoff would wait about 25 s
    assert "\n" not in str(info.value)


def test_default_dir_is_filled_from_mirror(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dl.MIRROR_ENV, f"{server.base}/mirror/")
    seen: set[str] = set()

    root = dl.resolve_weights_dir(progress=lambda name, done, total: seen.add(name))

    assert root == dl.default_weights_dir()
    assert missing_files(root) == []
    assert seen == set(WEIGHT_FILES)
    assert ("GET", f"/mirror/{SIGLIP_FILE}") in server.log  # the mirror serves the trunk too
    assert server.requests(HUB_PATH) == []


def test_default_dir_without_download_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsNotFound):
        dl.resolve_weights_dir(download=False)
    assert not dl.default_weights_dir().exists()


def test_default_weights_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dl.default_weights_dir() == tmp_path / "faramir-cache" / "weights"
    monkeypatch.delenv(dl.CACHE_ENV)
    assert dl.default_weights_dir() == tmp_path / "xdg" / "faramir" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.default_weights_dir() == tmp_path / "home" / ".cache" / "faramir" / "weights"


def test_upstream_urls_cover_every_file() -> None:
    assert set(dl.UPSTREAM_URLS) == set(WEIGHT_FILES)
    assert dl.UPSTREAM_URLS[SIGLIP_FILE] == (
        "https://huggingface.co/timm/vit_so400m_patch14_siglip_384.webli/resolve/main/model.safetensors"
    )


def test_file_url_mirror_and_explicit_hub_endpoint(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file:// mirror serves the .pth files; an explicit hf_endpoint still wins for the trunk."""
    mirror = tmp_path / "mirror"
    for name in PTH_FILES:
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_bytes(server.files[f"/gh/{name}"])
    monkeypatch.setenv(dl.MIRROR_ENV, mirror.as_uri())

    dest = tmp_path / "weights"
    dl.download_weights(dest, hf_endpoint=server.base)

    assert missing_files(dest) == []
    assert [p for _, p in server.log if p != HUB_PATH] == []
