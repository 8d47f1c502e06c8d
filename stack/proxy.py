"""The reverse proxy (nginx) in front of the gateway, from deploy/nginx's one template.

compose.yaml hands the template to the official nginx image, whose entrypoint fills in the
`${PROXY_*}` variables from the environment. Here the same template is filled in the same way and
run with the machine's nginx (Debian's package) as a local process, for the end-to-end tests.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import GatewaySettings
from stack.processes import ROOT, ServiceProcess

logger = logging.getLogger(__name__)

TEMPLATE = ROOT / "deploy" / "nginx" / "default.conf.template"
NGINX = "nginx"

# The values compose.yaml gives the template (tests/test_compose.py keeps the two in step).
DEFAULTS: dict[str, str] = {
    "PROXY_HEADER_TIMEOUT": "10s",
    "PROXY_BODY_TIMEOUT": "30s",
    "PROXY_MAX_BODY_BYTES": str(GatewaySettings.model_fields["max_upload_bytes"].default),
    "PROXY_CONNECTIONS_PER_CLIENT": "32",
}
_VARIABLE = re.compile(r"\$\{(PROXY_[A-Z0-9_]+)\}")


class TemplateError(ValueError):
    """The template names a variable that was given no value."""


def variables(template: str) -> set[str]:
    """The `${PROXY_*}` names a template uses."""
    return set(_VARIABLE.findall(template))


def render(template: str, values: dict[str, str]) -> str:
    """Substitute `${PROXY_*}` as the nginx image's envsubst step does; nginx's own `$vars` stay.

    Raises TemplateError naming every variable without a value (envsubst would leave it in place
    and nginx would refuse the file, less clearly).
    """
    missing = variables(template) - set(values)
    if missing:
        raise TemplateError(f"no value for {', '.join(sorted(missing))}")
    return _VARIABLE.sub(lambda match: values[match.group(1)], template)


def nginx_available() -> bool:
    return shutil.which(NGINX) is not None


@dataclass
class ProxyProcess(ServiceProcess):
    """nginx in the foreground, with its config, pid, logs and temporary files in one folder."""

    config: Path | None = None

    def command(self) -> list[str]:
        assert self.config is not None
        folder = self.config.parent
        return [NGINX, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(self.config)]


def write_config(folder: Path, *, port: int, upstream: str, **overrides: str) -> Path:
    """A complete nginx.conf for a non-daemon nginx on 127.0.0.1:`port`, around the rendered template.

    `overrides` replace DEFAULTS (e.g. PROXY_HEADER_TIMEOUT="2s" for a quick test).
    """
    folder = folder.resolve()  # nginx takes relative paths from its prefix, not from here
    folder.mkdir(parents=True, exist_ok=True)
    values = {
        **DEFAULTS,
        "PROXY_RESOLVER": "127.0.0.1",  # never asked: the upstream is an address
        **overrides,
        "PROXY_LISTEN": f"127.0.0.1:{port}",
        "PROXY_UPSTREAM": upstream,
    }
    (folder / "default.conf").write_text(render(TEMPLATE.read_text(), values))
    # Run as root (a container, CI), nginx's workers would switch to `nobody`, who cannot write here.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = folder / "nginx.conf"
    config.write_text(
        f"# Written by stack/proxy.py around {TEMPLATE.relative_to(ROOT)}.\n"
        f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} info;\n{user}"
        "events {\n    worker_connections 1024;\n}\n"
        "http {\n"
        f"    access_log {folder / 'access.log'};\n{temp}\n"
        f"    include {folder / 'default.conf'};\n"
        "}\n"
    )
    return config


def proxy(folder: Path, *, port: int, upstream: str, log_dir: Path | None = None, **overrides: str) -> ProxyProcess:
    """The proxy on 127.0.0.1:`port` in front of `upstream` (host:port); start() then wait_ready()."""
    config = write_config(folder, port=port, upstream=upstream, **overrides)
    log_path = log_dir / "proxy.log" if log_dir else None
    # /healthz goes through to the gateway: ready means nginx answers and reaches it.
    return ProxyProcess("proxy", NGINX, port, log_path=log_path, ready_path="/healthz", config=config)
