"""compose.yaml and the Dockerfiles, checked without a Docker engine.

They must run the same modules, on the same ports, with the same readiness checks as the local
runner (stack/processes.py), and each image must get every file and package its code needs.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import ipaddress
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from collection.__main__ import COMMANDS as COLLECTION_COMMANDS
from collection.__main__ import parser as collection_parser
from services.common.settings import ServiceSettings
from stack.processes import READINESS_PATH, SERVICES
from stack.proxy import DEFAULTS as PROXY_DEFAULTS
from stack.proxy import TEMPLATE as PROXY_TEMPLATE
from stack.proxy import nginx_available, render, variables

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
FIRST_PARTY = {"services", "gateway", "stack", "tests", "bench", "collection"}
BACKEND = [name for name in SERVICES if name != "gateway"]


# --- reading the files ---------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}` / `${VAR}`, as if no variable were set."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: a continuation line runs off the end"
    return instructions


@dataclass(frozen=True)
class Image:
    dockerfile: Path
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    @property
    def base(self) -> str:
        return self.all("FROM")[0]

    @property
    def cmd(self) -> list[str]:
        (cmd,) = self.all("CMD")
        parsed = json.loads(cmd)  # exec form, so SIGTERM reaches python rather than a shell
        assert isinstance(parsed, list)
        return parsed

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            tokens = shlex.split(args)
            if "=" not in tokens[0]:  # legacy `ENV KEY value`
                env[tokens[0]] = " ".join(tokens[1:])
                continue
            for token in tokens:
                key, _, value = token.partition("=")
                env[key] = value
        return env

    @property
    def copy_sources(self) -> list[str]:
        sources: list[str] = []
        for args in self.all("COPY") + self.all("ADD"):
            tokens = json.loads(args) if args.startswith("[") else shlex.split(args)
            assert not any(t.startswith("--from") for t in tokens), "multi-stage copies are not checked here"
            paths = [t for t in tokens if not t.startswith("--")]
            assert len(paths) >= 2, f"COPY {args}: needs a source and a destination"
            sources += paths[:-1]
        return sources

    @property
    def requirement_files(self) -> list[str]:
        return [m for run in self.all("RUN") for m in re.findall(r"(?:-r|--requirement)\s+(\S+)", run)]

    @property
    def healthcheck(self) -> list[str]:
        (args,) = self.all("HEALTHCHECK")
        match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", args)
        assert match, f"HEALTHCHECK {args}: expected options then CMD"
        return json.loads(match.group(2))


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_service(name: str) -> dict[str, Any]:
    return load_compose()["services"][name]


def compose_env(name: str) -> dict[str, str]:
    environment = compose_service(name).get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: interpolate(str(value)) for key, value in environment.items()}


def image_of(name: str) -> Image:
    build = compose_service(name)["build"]
    assert build["context"] == ".", "every image builds from the repository root"
    dockerfile = ROOT / build["dockerfile"]
    assert dockerfile.is_file(), f"{name}: {build['dockerfile']} does not exist"
    return Image(dockerfile, parse_dockerfile(dockerfile))


def settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(SERVICES[name][0] + ".settings")
    (cls,) = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and obj.__module__ == module.__name__
    ]
    return cls


def effective_env(name: str) -> dict[str, str]:
    """What the container's process sees: the image's ENV, overridden by compose's environment."""
    return {**image_of(name).env, **compose_env(name)}


def probed_url(command: list[str]) -> str:
    urls = re.findall(r"https?://[^\s'\"]+", " ".join(command))
    assert len(urls) == 1, f"expected one URL in the health check {command}"
    return urls[0]


# --- .dockerignore, with Docker's matching rules -------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def is_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves `path` out: the last pattern matching it or a parent decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_matcher_follows_dockers_rules() -> None:
    patterns = [(False, re.compile("var")), (False, re.compile("(?:.*/)?__pycache__")), (True, re.compile("var/keep"))]
    assert is_ignored("var/logs/a.log", patterns)
    assert is_ignored("services/common/__pycache__/x.pyc", patterns)
    assert not is_ignored("var/keep", patterns)
    assert not is_ignored("services/var.py", patterns)


# --- which files an image gets -------------------------------------------------------------------


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _guards_import(node: ast.AST) -> bool:
    if not isinstance(node, ast.Try):
        return False
    caught = [handler.type for handler in node.handlers]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in caught)


def imports_of(path: Path, module: str) -> Iterator[str]:
    """Absolute names of the modules `path` (the module `module`) imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    optional = {id(inner) for node in ast.walk(tree) if _guards_import(node) for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in optional:
            continue  # `try: import x / except ImportError`: the image works without x
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def code_closure(entry: str) -> tuple[set[Path], set[str]]:
    """Files of the first-party modules `python -m entry` loads, and the third-party top-level names it imports."""
    files: set[Path] = set()
    third_party: set[str] = set()
    todo = [entry, f"{entry}.__main__"]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.partition(".")[0]
        if top not in FIRST_PARTY:
            if top not in sys.stdlib_module_names:
                third_party.add(top)
            continue
        path = module_file(module)
        if path is None:  # `from package import name` where name is not a module
            continue
        files.add(path)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # the parent packages' __init__.py
        todo += imports_of(path, module)
    return files, third_party


def copied(path: Path, image: Image) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == s.rstrip("/") or relative.startswith(s.rstrip("/") + "/") for s in image.copy_sources)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def required_distributions(requirement_file: Path) -> set[str]:
    """The distributions a requirements file pins (following -r), and everything they depend on."""
    names: set[str] = set()
    for raw in requirement_file.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            names |= required_distributions(requirement_file.parent / line.split()[1])
        elif line:
            names.add(normalise(re.match(r"[A-Za-z0-9._-]+", line).group(0)))
    closure: set[str] = set()
    while names:
        name = names.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" not in requirement:
                names.add(normalise(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)))
    return closure


# --- the compose file as a whole -----------------------------------------------------------------


def test_compose_defines_the_services_the_local_runner_starts_the_proxy_and_the_one_shot_data_service() -> None:
    default = {name for name, service in load_compose()["services"].items() if not service.get("profiles")}
    assert default == {*SERVICES, "proxy", "data"}


def test_the_milvus_profile_runs_milvus_standalone_from_its_official_images_and_loads_it() -> None:
    services = load_compose()["services"]
    profiled = {name for name, service in services.items() if "milvus" in service.get("profiles", [])}
    assert profiled == {"milvus", "milvus-etcd", "milvus-minio", "milvus-load"}
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.")
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert services["milvus-etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    assert services["milvus-minio"]["image"].startswith("minio/minio:RELEASE.")
    assert "ports" not in services["milvus"], "Milvus is reached on the project's network only"
    load = services["milvus-load"]["command"]
    assert load[:4] == ["python", "-m", "collection", "milvus-load"] and load[3] in COLLECTION_COMMANDS
    assert load[load.index("--uri") + 1] == "http://milvus:19530"


def test_search_selects_milvus_by_its_environment_and_waits_for_the_load_only_in_that_profile() -> None:
    search = compose_service("search")
    environment = compose_env("search")
    assert environment["SEARCH_BACKEND"] == "faiss", "FAISS unless SEARCH_BACKEND says otherwise"
    assert environment["SEARCH_MILVUS_URI"] == "http://milvus:19530"
    assert search["depends_on"]["milvus-load"] == {"condition": "service_completed_successfully", "required": False}


def test_compose_uses_the_versionless_compose_spec() -> None:
    assert "version" not in load_compose()


def test_every_named_volume_a_service_mounts_is_declared() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/", "~", "$"))
    }
    assert used == declared == {"model-cache", "image-cache", "search-cache"}


def test_only_the_proxy_publishes_a_port_and_on_the_gateway_port() -> None:
    for name in SERVICES:
        service = compose_service(name)
        assert "ports" not in service, f"{name} must not be reachable from the host"
        assert [str(port) for port in service["expose"]] == [str(SERVICES[name][1])]
    (published,) = compose_service("proxy")["ports"]
    address, host_port, container_port = interpolate(published).split(":")
    assert container_port == compose_env("proxy")["PROXY_LISTEN"]
    assert address == "127.0.0.1", "by default only this machine reaches the proxy"
    assert int(host_port) == SERVICES["gateway"][1], "users open the same address with or without the proxy"


# --- the reverse proxy ---------------------------------------------------------------------------


def test_proxy_is_the_official_nginx_image_at_a_pinned_version() -> None:
    image = compose_service("proxy")["image"]
    assert re.fullmatch(r"nginx:\d+\.\d+(\.\d+)?(-alpine)?", image), image
    assert "build" not in compose_service("proxy")


def test_proxy_renders_the_template_the_tests_run_in_place_of_the_images_default() -> None:
    mount = f"./{PROXY_TEMPLATE.parent.relative_to(ROOT).as_posix()}:/etc/nginx/templates:ro"
    assert compose_service("proxy")["volumes"] == [mount]
    # The image writes templates/X.template to conf.d/X: default.conf replaces the image's own server.
    assert PROXY_TEMPLATE.name == "default.conf.template"
    # The entrypoint fills in *.template only: the folder's kustomization.yaml (the template as a ConfigMap
    # for deploy/kubernetes) is not read there.
    assert [p.name for p in PROXY_TEMPLATE.parent.glob("*.template")] == [PROXY_TEMPLATE.name]
    assert {p.name for p in PROXY_TEMPLATE.parent.iterdir()} == {PROXY_TEMPLATE.name, "kustomization.yaml"}


def test_proxy_gives_the_template_every_variable_with_the_values_the_tests_use() -> None:
    env = compose_env("proxy")
    template = PROXY_TEMPLATE.read_text()
    given = {key for key in env if key.startswith("PROXY_")}
    assert given == variables(template), "compose and the template name different variables"
    assert re.match(env["NGINX_ENVSUBST_FILTER"], "PROXY_LISTEN")
    assert not re.match(env["NGINX_ENVSUBST_FILTER"], "HOSTNAME"), "only the template's own names are filled in"
    assert {key: env[key] for key in PROXY_DEFAULTS} == PROXY_DEFAULTS
    assert int(env["PROXY_MAX_BODY_BYTES"]) == settings_class("gateway").model_fields["max_upload_bytes"].default
    assert env["PROXY_UPSTREAM"].split()[0] == f"gateway:{SERVICES['gateway'][1]}"


def test_gateway_trusts_forwarded_for_from_the_proxys_fixed_address_only() -> None:
    (subnet,) = [interpolate(c["subnet"]) for c in load_compose()["networks"]["default"]["ipam"]["config"]]
    address = interpolate(compose_service("proxy")["networks"]["default"]["ipv4_address"])
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    assert effective_env("gateway")["GATEWAY_TRUSTED_PROXIES"] == address
    # Both follow one variable, so moving the proxy cannot leave the gateway trusting another address.
    assert (
        compose_service("gateway")["environment"]["GATEWAY_TRUSTED_PROXIES"]
        == (compose_service("proxy")["networks"]["default"]["ipv4_address"])
    )


def test_proxy_starts_once_the_gateway_is_healthy_and_checks_through_to_it() -> None:
    proxy = compose_service("proxy")
    assert proxy["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert proxy["restart"] == "unless-stopped"
    url = urlsplit(proxy["healthcheck"]["test"][-1])
    assert (url.hostname, str(url.port), url.path) == ("127.0.0.1", compose_env("proxy")["PROXY_LISTEN"], "/healthz")


@pytest.mark.skipif(not nginx_available(), reason="nginx is not installed (scripts/install.sh installs it)")
def test_proxy_config_with_composes_values_passes_nginxs_own_check(tmp_path: Path) -> None:
    values = compose_env("proxy")
    # This machine's nginx may predate `resolve`, and cannot look up `gateway`: the rest is compose's.
    values |= {"PROXY_UPSTREAM": "127.0.0.1:8000", "PROXY_RESOLVER": "127.0.0.1"}
    (tmp_path / "default.conf").write_text(render(PROXY_TEMPLATE.read_text(), values))
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    include {tmp_path}/default.conf;\n}}\n"
    )
    checked = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_gateway_reaches_each_service_by_its_compose_name_and_port() -> None:
    env = compose_env("gateway")
    fields = settings_class("gateway").model_fields
    for name in BACKEND:
        assert f"{name}_url" in fields, f"GatewaySettings has no {name}_url"
        assert env[f"GATEWAY_{name.upper()}_URL"] == f"http://{name}:{SERVICES[name][1]}"


def test_gateway_starts_once_each_service_is_healthy() -> None:
    depends_on = compose_service("gateway")["depends_on"]
    assert {name: spec["condition"] for name, spec in depends_on.items()} == dict.fromkeys(BACKEND, "service_healthy")
    for name in BACKEND:
        assert "healthcheck" in compose_service(name), f"{name} is waited on but has no health check"


def test_search_reads_the_collection_from_a_read_only_data_volume() -> None:
    env = effective_env("search")
    assert env["SEARCH_MMAP"] == "true"
    assert f"./data:{env['SEARCH_DATA_DIR']}:ro" in compose_service("search")["volumes"]


def test_embedder_caches_the_model_in_its_volume() -> None:
    env = effective_env("embedder")
    assert f"model-cache:{env['EMBEDDER_CACHE_DIR']}" in compose_service("embedder")["volumes"]
    assert env["HF_HOME"].startswith(env["EMBEDDER_CACHE_DIR"] + "/")
    assert env["EMBEDDER_MODEL"] == settings_class("embedder").model_fields["model"].default


def test_fetcher_caches_images_in_its_volume() -> None:
    env = effective_env("fetcher")
    assert f"image-cache:{env['FETCHER_CACHE_DIR']}" in compose_service("fetcher")["volumes"]


def test_embedder_installs_the_pinned_torch_from_the_cpu_index_before_its_requirements() -> None:
    runs = image_of("embedder").all("RUN")
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements/embedder.txt").read_text(), re.M))
    assert set(pins) == {"torch", "torchvision"}
    # The index is a build argument (the GPU image takes PyPI's CUDA wheels) whose default is the CPU one.
    args = dict(arg.partition("=")[::2] for arg in image_of("embedder").all("ARG"))
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    (cpu,) = [i for i, run in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}"' in run]
    for package, version in pins.items():
        assert f"{package}=={version}" in runs[cpu].split(), f"the Dockerfile installs another {package} than {version}"
    (requirements,) = [i for i, run in enumerate(runs) if "requirements/embedder.txt" in run]
    assert cpu < requirements


# --- each service --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICES))
def test_container_runs_the_module_the_local_runner_runs(name: str) -> None:
    expected = ["python", "-m", SERVICES[name][0]]
    assert image_of(name).cmd == expected
    command = compose_service(name).get("command")
    if command is not None:
        assert (shlex.split(command) if isinstance(command, str) else command) == expected


@pytest.mark.parametrize("name", list(SERVICES))
def test_container_listens_on_all_interfaces_at_the_local_runner_port(name: str) -> None:
    env = effective_env(name)
    prefix = name.upper()
    port = int(env.get(f"{prefix}_PORT", settings_class(name).model_fields["port"].default))
    assert port == SERVICES[name][1]
    assert env[f"{prefix}_HOST"] == "0.0.0.0"
    assert image_of(name).all("EXPOSE") == [str(port)]


@pytest.mark.parametrize("name", list(SERVICES))
def test_health_checks_probe_readiness_on_the_service_port(name: str) -> None:
    healthcheck = compose_service(name)["healthcheck"]
    assert {"interval", "timeout", "retries", "start_period"} <= set(healthcheck)
    for command in (healthcheck["test"], ["CMD", *image_of(name).healthcheck]):
        assert command[:2] == ["CMD", "python"], "slim images have no curl: probe with python"
        url = urlsplit(probed_url(command))
        assert (url.hostname, url.port, url.path) == ("127.0.0.1", SERVICES[name][1], READINESS_PATH)


class _Readiness(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == READINESS_PATH else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("name", list(SERVICES))
def test_health_check_passes_only_while_the_service_is_ready(name: str) -> None:
    command = compose_service(name)["healthcheck"]["test"][1:]
    results = {}
    for status in (200, 503):
        handler = type("Handler", (_Readiness,), {"status": status})
        with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                local = [
                    arg.replace(f"127.0.0.1:{SERVICES[name][1]}", f"127.0.0.1:{server.server_port}")
                    for arg in command[1:]
                ]
                done = subprocess.run([sys.executable, *local], capture_output=True, timeout=30, check=False)
            finally:
                server.shutdown()
                thread.join()
        results[status] = done.returncode
    assert results[200] == 0
    assert results[503] != 0


@pytest.mark.parametrize("name", list(SERVICES))
def test_services_restart_unless_stopped(name: str) -> None:
    assert compose_service(name)["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", list(SERVICES))
def test_image_is_slim_python_and_runs_as_a_non_root_user(name: str) -> None:
    image = image_of(name)
    assert image.base.startswith("python:3.11-slim")
    users = image.all("USER")
    assert users, f"{image.dockerfile} never leaves root"
    assert users[-1].partition(":")[0] not in {"root", "0"}
    env = image.env
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == env["PIP_NO_CACHE_DIR"] == "1"


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_path_a_dockerfile_copies_exists(name: str) -> None:
    image = image_of(name)
    assert image.copy_sources
    for source in image.copy_sources:
        assert (ROOT / source).exists(), f"{image.dockerfile}: COPY {source} does not exist"


@pytest.mark.parametrize("name", list(SERVICES))
def test_image_installs_its_own_requirements_file_from_a_copied_path(name: str) -> None:
    image = image_of(name)
    files = image.requirement_files
    assert f"requirements/{name}.txt" in files
    for file in files:
        assert (ROOT / file).is_file(), f"{image.dockerfile}: {file} does not exist"
        assert copied(ROOT / file, image), f"{image.dockerfile}: {file} is installed but never copied in"


@pytest.mark.parametrize("name", list(SERVICES))
def test_image_contains_every_first_party_module_its_entry_point_loads(name: str) -> None:
    image = image_of(name)
    files, _ = code_closure(SERVICES[name][0])
    assert ROOT / "services/common/__init__.py" in files, "the closure walk found nothing shared"
    missing = sorted(str(path.relative_to(ROOT)) for path in files if not copied(path, image))
    assert not missing, f"{image.dockerfile} leaves out {missing}"


@pytest.mark.parametrize("name", list(SERVICES))
def test_image_requirements_cover_every_third_party_import(name: str) -> None:
    _, third_party = code_closure(SERVICES[name][0])
    assert "fastapi" in third_party
    installed = set()
    for file in image_of(name).requirement_files:
        installed |= required_distributions(ROOT / file)
    distributions = importlib.metadata.packages_distributions()
    missing = sorted(
        top for top in third_party if not {normalise(d) for d in distributions.get(top, [top])} & installed
    )
    assert not missing, f"the {name} image installs nothing that provides {missing}"


@pytest.mark.parametrize("name", list(SERVICES))
def test_dockerignore_keeps_what_the_image_copies(name: str) -> None:
    patterns = dockerignore_patterns()
    for source in image_of(name).copy_sources:
        root = ROOT / source
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            relative = path.relative_to(ROOT).as_posix()
            if "__pycache__" in path.parts or path.suffix == ".pyc" or path.name == "Dockerfile":
                continue
            assert not is_ignored(relative, patterns), f".dockerignore leaves out {relative}, which {name} copies"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "var/logs/gateway.log",
        "data/faiss/index.index",
        "tests/test_compose.py",
        "bench/run.py",
        "services/common/__pycache__/settings.cpython-311.pyc",
        "gateway/__pycache__/app.cpython-311.pyc",
    ],
)
def test_dockerignore_keeps_local_state_out_of_the_build_context(path: str) -> None:
    assert is_ignored(path, dockerignore_patterns())


# --- the one-shot data service -------------------------------------------------------------------


def data_command() -> argparse.Namespace:
    """The data service's command, parsed by the real `python -m collection` parser."""
    command = compose_service("data")["command"]
    assert command[:3] == ["python", "-m", "collection"]
    assert image_of("data").cmd == command
    args = collection_parser().parse_args(command[3:])
    assert args.command == "download"
    return args


def mounts(name: str) -> dict[str, str]:
    """Container path -> source (a named volume or a host path) of a service's volumes."""
    found = {}
    for volume in compose_service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def test_data_service_downloads_into_the_folders_search_and_the_embedder_read() -> None:
    args = data_command()
    data, search, embedder = mounts("data"), mounts("search"), mounts("embedder")
    search_env, embedder_env = effective_env("search"), effective_env("embedder")
    assert data[str(args.data_dir)] == search[search_env["SEARCH_DATA_DIR"]] == "./data"
    assert data[str(args.model_cache)] == embedder[embedder_env["EMBEDDER_CACHE_DIR"]] == "model-cache"
    assert data[str(args.search_cache)] == search[search_env["SEARCH_CACHE_DIR"]] == "search-cache"
    assert embedder[embedder_env["EMBEDDER_TREE_OF_LIFE_DIR"]] == "./data"
    assert not any(v.endswith(":ro") for v in compose_service("data")["volumes"]), "the data service writes"
    assert compose_service("data")["restart"] == "no"


def test_search_and_embedder_wait_for_the_data_service_to_succeed() -> None:
    for name in ("search", "embedder"):
        required = {k: v for k, v in compose_service(name)["depends_on"].items() if v.get("required", True)}
        assert required == {"data": {"condition": "service_completed_successfully"}}
    assert "healthcheck" not in compose_service("data"), "a one-shot job is waited on by its exit, not its health"


def test_data_service_passes_the_hub_settings_through() -> None:
    env = compose_service("data")["environment"]
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        assert f"${{{name}" in env[name], f"{name} must come from the host's environment"


def test_data_image_has_the_code_and_packages_the_download_needs() -> None:
    image = image_of("data")
    files, third_party = code_closure("collection")
    assert ROOT / "collection/download.py" in files and "huggingface_hub" in third_party
    assert not [str(p.relative_to(ROOT)) for p in files if not copied(p, image)]
    assert image.requirement_files == ["requirements/collection.txt"]
    installed = required_distributions(ROOT / "requirements/collection.txt")
    distributions = importlib.metadata.packages_distributions()
    missing = [top for top in third_party if not {normalise(d) for d in distributions.get(top, [top])} & installed]
    assert not missing
    patterns = dockerignore_patterns()
    assert not [s for s in image.copy_sources if is_ignored(s, patterns)]


DOCKERFILES = sorted(ROOT.glob("*/Dockerfile")) + sorted(ROOT.glob("services/*/Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# --- the compose specification, and replicas -----------------------------------------------------


def check_compose_schema(path: Path) -> tuple[int, str]:
    """check-jsonschema against its vendored copy of the compose-spec schema, in this process (so the
    test suite's guard sees that nothing is fetched)."""
    from check_jsonschema.cli.main_command import main as check_jsonschema
    from click.testing import CliRunner

    done = CliRunner().invoke(check_jsonschema, ["--builtin-schema", "vendor.compose-spec", str(path)])
    return done.exit_code, done.output


def test_compose_file_follows_the_compose_specification() -> None:
    code, output = check_compose_schema(COMPOSE_FILE)
    assert code == 0, output


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda c: c["services"]["fetcher"]["healthcheck"].update(intervall="15s"), "intervall"),
        (lambda c: c["services"]["search"]["deploy"].update(replicas=[2]), "replicas"),
        (lambda c: c["services"]["gateway"].update(restart=["always"]), "restart"),
    ],
    ids=["misspelled key", "wrong type", "wrong type of a known key"],
)
def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path, damage: Any, expected: str) -> None:
    compose = load_compose()
    damage(compose)
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    code, output = check_compose_schema(broken)
    assert code == 1
    assert expected in output


@pytest.mark.parametrize("name", ["embedder", "search"])
def test_embedder_and_search_run_as_several_replicas_behind_one_name(name: str) -> None:
    service = compose_service(name)
    replicas = interpolate(str(service["deploy"]["replicas"]))
    assert int(replicas) >= 2
    assert f"${{{name.upper()}_REPLICAS" in str(service["deploy"]["replicas"]), "the operator sets how many"
    # Replicas share the service's name: one container name or one host port would collide.
    assert "container_name" not in service
    assert "ports" not in service


def test_fetcher_stays_one_replica_and_the_proxy_is_the_only_published_port() -> None:
    assert compose_service("fetcher")["deploy"]["replicas"] == 1
    services = load_compose()["services"]
    assert [name for name, service in services.items() if "ports" in service] == ["proxy"]
    assert not [name for name, service in services.items() if "container_name" in service]
