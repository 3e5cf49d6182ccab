"""`ollama`, `vllm`, `llamacpp`, `local`: OpenAI-compatible servers you run yourself.

    provider   default base URL            override                   key (optional)
    ollama     http://localhost:11434/v1   OLLAMA_HOST (host:port|URL)
    vllm       http://localhost:8000/v1                               VLLM_API_KEY
    llamacpp   http://localhost:8080/v1                               LLAMA_API_KEY
    local      (none)                      EMBER_LOCAL_BASE_URL       EMBER_LOCAL_API_KEY

They speak OpenAI's wire format, so each is an `OpenAIProvider` with another base URL,
no required key (a placeholder is sent) and none of OpenAI's model-specific parameter
rules. Their models are free (cost 0). vLLM answers ``n`` samples in one request; for
the others Ember sends ``n`` requests, because not all of them honour ``n``. Settings
are read at call time, like every provider's.
"""

from __future__ import annotations

import os
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError
from .openai import OpenAIProvider
from .credentials import check_url, clean_key

__all__ = ["OpenAICompatibleProvider", "ollama", "vllm", "llamacpp", "local"]

_NO_KEY = "not-needed"


class OpenAICompatibleProvider(OpenAIProvider):
    """An OpenAI-compatible chat-completions server at a configurable base URL."""

    reasoning_rules = False

    def __init__(self, name: str, *, url: Callable[[], str], label: str,
                 url_env: str | None = None, key_env: str | None = None,
                 supports_n: bool = False, example_model: str = "model-name",
                 start_hint: str = "", timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self.name = name
        self.label = label
        self.base_url_env = url_env
        self.key_env = key_env
        self.supports_n = supports_n
        self.example_model = example_model
        self.start_hint = start_hint
        self._url = url

    def base_url(self) -> str:
        return self._url()

    def api_key(self) -> str:
        key = os.environ.get(self.key_env, "") if self.key_env else ""
        return (clean_key(key, self.key_env) if key else "") or _NO_KEY  # type: ignore[arg-type]


def _ollama_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return "http://localhost:11434/v1"
    parts = urlsplit(check_url(host, "OLLAMA_HOST", "gpu-box:11434", default_scheme="http"))
    netloc = parts.netloc if parts.port or parts.scheme == "https" else parts.netloc + ":11434"
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, netloc, path if path.endswith("/v1") else path + "/v1", "", ""))


def _local_url() -> str:
    url = os.environ.get("EMBER_LOCAL_BASE_URL", "").strip()
    if not url:
        raise ConfigurationError(
            "Provider 'local' needs the URL of your OpenAI-compatible server: set "
            "EMBER_LOCAL_BASE_URL, e.g. `export EMBER_LOCAL_BASE_URL="
            "http://localhost:8000/v1`. For Ollama, vLLM or llama.cpp on their default "
            "ports use 'ollama/...', 'vllm/...' or 'llamacpp/...' instead.")
    return check_url(url, "EMBER_LOCAL_BASE_URL", "http://localhost:8000/v1").rstrip("/")


def ollama() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("ollama", url=_ollama_url, label="Ollama",
                                    url_env="OLLAMA_HOST", example_model="llama3.2",
                                    start_hint="Start it with `ollama serve`. ")


def vllm() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("vllm", url=lambda: "http://localhost:8000/v1", label="vLLM",
                                    key_env="VLLM_API_KEY", supports_n=True,
                                    example_model="Qwen/Qwen2.5-7B-Instruct",
                                    start_hint="Start it with `vllm serve <model>`. ")


def llamacpp() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("llamacpp", url=lambda: "http://localhost:8080/v1",
                                    label="llama.cpp", key_env="LLAMA_API_KEY",
                                    example_model="default",
                                    start_hint="Start it with `llama-server -m <model.gguf>`. ")


def local() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("local", url=_local_url, label="the local server",
                                    url_env="EMBER_LOCAL_BASE_URL",
                                    key_env="EMBER_LOCAL_API_KEY")
