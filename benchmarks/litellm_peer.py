"""LiteLLM's proxy as the peer of benchmarks/gateway.py (`--peer litellm`).

It lives in its own virtual environment, made on first use and kept between runs
(~/.cache/planctl-bench/litellm-venv, or under $XDG_CACHE_HOME), with one pinned version from PyPI,
so that its many dependencies never meet planctl's. It runs with one worker, no database and a
master key (the one key it checks, as planctl checks each request's key), and forwards
`POST /v1/responses` natively (LiteLLM's Responses API, not a translation to Chat Completions) to
the fake upstream, an OpenAI provider with a custom api_base. It must reach nothing but loopback:
the cost map is the copy shipped in the package, telemetry is off, and any HTTP client that honours
the proxy variables is sent to a closed loopback port for every host but 127.0.0.1 (with strace,
1.108.7's only connect() calls were to the fake upstream).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

VERSION = "1.108.7"  # the version whose figures issue 15 quotes
MASTER_KEY = "sk-" + secrets.token_hex(32)  # it refuses to start without a strong one
VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "planctl-bench" / "litellm-venv"
OFFLINE = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the model cost map at start-up
    "LITELLM_TELEMETRY": "False",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",  # port 9: nothing listens
    "NO_PROXY": "127.0.0.1,localhost",
}


def installed_version() -> str | None:
    python = VENV / "bin" / "python"
    if not python.is_file():
        return None
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_installed() -> str | None:
    """The `litellm` command of the pinned version, installing it on first use; None (and why,
    printed) when it cannot be installed."""
    if installed_version() != VERSION:
        print(f"peer    : installing litellm[proxy]=={VERSION} into {VENV} (first use) …", flush=True)
        steps = [[sys.executable, "-m", "venv", str(VENV)],
                 [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"litellm[proxy]=={VERSION}"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                lines = (done.stderr + done.stdout).strip().splitlines()
                why = [line for line in lines if "error" in line.lower()][-5:] or lines[-5:]
                print(f"peer    : skipped, {' '.join(step[:4])} … exited {done.returncode}:", *why, sep="\n  ")
                return None
        if installed_version() != VERSION:
            print(f"peer    : skipped, {VENV} holds litellm {installed_version()}, not {VERSION}")
            return None
    return str(VENV / "bin" / "litellm")


def start(command: str, port: int, up_port: int, up_key: str, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The proxy on 127.0.0.1:port with one model, gpt-5.4, on the fake upstream; its process and log."""
    config = workdir / "litellm.yaml"  # JSON is YAML
    config.write_text(json.dumps({
        "model_list": [{"model_name": "gpt-5.4", "litellm_params": {
            "model": "openai/gpt-5.4", "api_base": f"http://127.0.0.1:{up_port}/v1", "api_key": up_key}}],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"telemetry": False, "set_verbose": False},
    }))
    log = workdir / "litellm.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.Popen([command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1", "--telemetry", "False"],
                            env={**env, **OFFLINE}, cwd=workdir, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, log


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    """Until the proxy answers its liveness probe (it binds its port only once its app has started)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with opener.open(f"http://127.0.0.1:{port}/health/liveliness", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    tail = log.read_text(errors="replace").strip().splitlines()[-15:]
    sys.exit("error: LiteLLM's proxy did not start:\n  " + "\n  ".join(tail))
