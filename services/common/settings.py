"""The settings every service has; each service subclasses it with its own env prefix."""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# How a core names a setting in a message without knowing its environment variable: `setting("device")`.
_SETTING = re.compile(r"⟨([a-z0-9_]+)⟩")


def setting(field: str) -> str:
    """A setting named in a core's message, as a placeholder; the service's edge renders it (`render_settings`)
    as the environment variable an operator sets, e.g. `EMBEDDER_DEVICE`."""
    return f"⟨{field}⟩"


def render_settings(message: str, name_of: Callable[[str], str]) -> str:
    """`message` with each `setting(field)` placeholder replaced by `name_of(field)`."""
    return _SETTING.sub(lambda match: name_of(match.group(1)), message)


class ConfigurationError(Exception):
    """A setting that cannot work. The message names settings as `setting(field)` placeholders: `str()` shows
    the fields' names; `render(name_of)` is what the service's edge tells operators (`ServiceSettings.env_name`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def render(self, name_of: Callable[[str], str]) -> str:
        return render_settings(self.message, name_of)

    def __str__(self) -> str:
        return self.render(lambda field: field)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a setting: the class's env prefix + the field's name in capitals."""
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in a container).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    log_level: str = Field("INFO", description="Python logging level.")
    blocking_threads: int = Field(
        4, ge=1, le=64, description="Threads for blocking work (model, FAISS, DuckDB, Pillow)."
    )
