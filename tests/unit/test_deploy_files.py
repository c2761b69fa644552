"""The static deployment files: Dockerfile, .dockerignore, render.yaml, render.free.yaml,
docker-compose.yaml and docs/deploy.md.

No Docker and no network: the Blueprints are validated against Render's JSON schema, the
compose file against the compose spec, the Dockerfile with hadolint, and every role, health
path and environment variable is checked against what the code reads (the `env` metadata of
`tickhub.config.Settings` / `FeederSettings`).

`dockerfile_argv()` / `image_command()` give the image's start command as an argv list, for
tests that run it locally per role.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from tickhub import config

ROOT = Path(__file__).parents[2]
SCHEMA = Path(__file__).parents[2].parent / "shared/data/render-blueprint.schema.json"
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
BLUEPRINTS = ("render.yaml", "render.free.yaml")

#: Every environment variable tickhub reads.
KNOWN_ENV = frozenset(
    att.metadata["env"]
    for cls in (config.Settings, config.FeederSettings)
    for att in attrs.fields(cls)
    if "env" in att.metadata
)
#: Variables the platform itself injects or reads (allowed although tickhub may not read them).
RENDER_INJECTED = frozenset({"PORT"})
#: Build-time variables of the dashboard's static build: the page's URLs (`tickhub ui build`
#: falls back to them) and the language versions of Render's native build environment.
STATIC_BUILD_ENV = frozenset(
    {"VITE_API_BASE_URL", "VITE_REALTIME_URL", "PYTHON_VERSION", "NODE_VERSION"}
)
#: Process environment of the image that is not tickhub's (interpreter, pip, shell).
IMAGE_ENV = frozenset(
    {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_DISABLE_PIP_VERSION_CHECK"}
)

#: Readiness paths each role serves (ARCHITECTURE §2); `{prefix}` is API_PREFIX.
READINESS = {
    "api": {"{prefix}/health/readiness", "/ops/health/readiness"},
    "gateway": {"/health/readiness", "/ops/health/readiness"},
    "consumer": {"/ops/health/readiness"},
    "feeder": {"/ops/health/readiness"},
}
READINESS["all"] = set().union(*READINESS.values())

#: render.yaml: the seed guide's services -> (role, health check path).
SPLIT_SERVICES = {
    "orchestrator-api": ("api", "/api/v1/health/readiness"),
    "realtime-gateway": ("gateway", "/health/readiness"),
    "consumers": ("consumer", "/ops/health/readiness"),
    "feeder": ("feeder", "/ops/health/readiness"),
}


# --- helpers ------------------------------------------------------------------------------


def load_yaml(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def services(blueprint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in blueprint.get("services", [])}


def groups(blueprint: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {g["name"]: g["envVars"] for g in blueprint.get("envVarGroups", [])}


def env_specs(blueprint: dict[str, Any], service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's envVars by key, the variables of its env groups included."""
    specs: dict[str, dict[str, Any]] = {}
    for item in service.get("envVars", []):
        if "fromGroup" in item:
            for grouped in groups(blueprint)[item["fromGroup"]]:
                specs[grouped["key"]] = {**grouped, "group": item["fromGroup"]}
        else:
            specs[item["key"]] = item
    return specs


def role_of(specs: dict[str, dict[str, Any]]) -> str:
    return specs["TICKHUB_ROLE"]["value"]


def is_static(service: dict[str, Any]) -> bool:
    return service.get("runtime") == "static"


def allowed_env(static: bool) -> frozenset[str]:
    return KNOWN_ENV | RENDER_INJECTED | (STATIC_BUILD_ENV if static else frozenset())


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.strip():
            instruction, _, args = logical.strip().partition(" ")
            yield instruction.upper(), args.strip()
        logical = ""


def final_stage(text: str) -> list[tuple[str, str]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions(text):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    assert stages, "no FROM in the Dockerfile"
    return stages[-1]


def _exec_form(instruction: str, args: str) -> list[str]:
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        argv = None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError(f"{instruction} is not exec-form (a JSON array of strings): {args}")
    return argv


def dockerfile_argv(text: str | None = None) -> list[str]:
    """The final image's start command: ENTRYPOINT + CMD of the last stage, as an argv list.

    Raises ValueError when either is in shell form (then signals would go to /bin/sh, not to
    tickhub) or when neither is set.
    """
    text = DOCKERFILE.read_text() if text is None else text
    entrypoint: list[str] = []
    cmd: list[str] = []
    for instruction, args in final_stage(text):
        if instruction == "ENTRYPOINT":
            entrypoint = _exec_form(instruction, args)
            cmd = []  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif instruction == "CMD":
            cmd = _exec_form(instruction, args)
    if not entrypoint and not cmd:
        raise ValueError("the final stage sets neither ENTRYPOINT nor CMD")
    return entrypoint + cmd


def image_command(argv: list[str] | None = None) -> list[str]:
    """The image's command without its init wrapper (`tini --`): what to run on a host."""
    argv = dockerfile_argv() if argv is None else list(argv)
    if argv and Path(argv[0]).name in {"tini", "dumb-init"}:
        argv = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    return argv


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose_tickhub_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run the tickhub image (built from ./Dockerfile)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith("tickhub")
    }


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    tool = VENV_BIN / name
    assert tool.exists(), f"{tool} not found: install requirements-dev.lock into this venv"
    return subprocess.run(
        [str(tool), *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


# --- Render Blueprints ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_validates_against_render_schema(name: str) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"Render Blueprint schema not found at {SCHEMA} (shared/ beside the repo)")
    done = run_tool("check-jsonschema", "--schemafile", str(SCHEMA), name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_render_schema_is_strict() -> None:
    """The schema really rejects a misspelt field, so passing it means something."""
    if not SCHEMA.is_file():
        pytest.skip(f"Render Blueprint schema not found at {SCHEMA} (shared/ beside the repo)")
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    blueprint = load_yaml("render.yaml")
    assert validator.is_valid(blueprint)
    services(blueprint)["orchestrator-api"]["healthcheckPath"] = "/typo"
    assert not validator.is_valid(blueprint)


def test_render_split_services_roles_and_health_paths() -> None:
    blueprint = load_yaml("render.yaml")
    by_name = services(blueprint)
    for name, (role, health) in SPLIT_SERVICES.items():
        svc = by_name[name]
        specs = env_specs(blueprint, svc)
        assert svc["type"] == "web", f"{name}: web, so that Render health-checks it"
        assert svc["runtime"] == "docker"
        assert svc["dockerfilePath"] == "./Dockerfile"
        assert "dockerCommand" not in svc, f"{name}: keep the image's tini entrypoint and CMD"
        assert role_of(specs) == role
        assert svc["healthCheckPath"] == health
        prefix = specs.get("API_PREFIX", {}).get("value", "/api/v1")
        served = {p.format(prefix=prefix) for p in READINESS[role]}
        assert health in served, f"{name}: the {role} role does not serve {health}"
    dashboard = by_name["dashboard"]
    assert (dashboard["type"], dashboard["runtime"]) == ("web", "static")
    assert set(by_name) == {*SPLIT_SERVICES, "dashboard", "tickhub-kv"}


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_render_env_vars_are_ones_the_code_reads(name: str) -> None:
    blueprint = load_yaml(name)
    for group, env_vars in groups(blueprint).items():
        unknown = {v["key"] for v in env_vars} - allowed_env(static=False)
        assert not unknown, f"env group {group}: tickhub does not read {sorted(unknown)}"
    for svc_name, svc in services(blueprint).items():
        if svc["type"] in {"keyvalue", "redis"}:
            continue
        specs = env_specs(blueprint, svc)
        unknown = set(specs) - allowed_env(static=is_static(svc))
        assert not unknown, f"{name} {svc_name}: tickhub does not read {sorted(unknown)}"
        if not is_static(svc):
            roles = role_of(specs).split(",")
            assert set(roles) <= set(config.ROLES), f"{svc_name}: unknown role {roles}"


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_render_references_resolve(name: str) -> None:
    blueprint = load_yaml(name)
    databases = {d["name"] for d in blueprint.get("databases", [])}
    by_name = services(blueprint)
    regions = {r.get("region") for r in [*blueprint.get("databases", []), *by_name.values()]}
    regions.discard(None)
    assert len(regions) <= 1, f"one region, for the private network: {regions}"
    for svc in by_name.values():
        for item in svc.get("envVars", []):
            if "fromGroup" in item:
                assert item["fromGroup"] in groups(blueprint)
            if "fromDatabase" in item:
                assert item["fromDatabase"]["name"] in databases
                assert item["fromDatabase"]["property"] == "connectionString"
            if "fromService" in item:
                ref = item["fromService"]
                target = by_name[ref["name"]]
                assert ref["type"] == target["type"]
                if "envVarKey" in ref:
                    assert ref["envVarKey"] in env_specs(blueprint, target)


def test_render_split_wiring() -> None:
    blueprint = load_yaml("render.yaml")
    by_name = services(blueprint)
    env = {name: env_specs(blueprint, svc) for name, svc in by_name.items()}

    kv = by_name["tickhub-kv"]
    assert kv["type"] == "keyvalue"
    assert kv["ipAllowList"] == [], "Key Value must be internal only"
    assert kv["maxmemoryPolicy"] == "noeviction", "the ticks queue is a stream: never evict"

    needs = {
        "orchestrator-api": {"DATABASE_URL", "REDIS_URL"},
        "realtime-gateway": {"DATABASE_URL", "REDIS_URL"},
        "consumers": {"DATABASE_URL", "REDIS_URL"},
        "feeder": set(),
    }
    for name, keys in needs.items():
        for key in keys:
            spec = env[name][key]
            assert "value" not in spec, f"{name} {key}: a reference, never a literal URL"
            if key == "DATABASE_URL":
                assert spec["fromDatabase"]["name"] == "tickhub-db"
            else:
                assert spec["fromService"] == {
                    "type": "keyvalue",
                    "name": "tickhub-kv",
                    "property": "connectionString",
                }
    assert "DATABASE_URL" not in env["feeder"] and "REDIS_URL" not in env["feeder"]

    # Shared queue names come from one place, so producers and consumers agree.
    for name in ("orchestrator-api", "realtime-gateway", "consumers"):
        for key in ("QUEUE_PREFIX", "TICKS_QUEUE", "PUBSUB_CHANNEL"):
            assert env[name][key].get("group") == "tickhub-shared", (name, key)

    api = env["orchestrator-api"]
    assert api["API_KEY"] == {"key": "API_KEY", "generateValue": True}
    assert api["CORS_ALLOW_ORIGINS"].get("sync") is False
    assert env["realtime-gateway"]["ALLOW_ORIGINS"].get("sync") is False
    assert by_name["orchestrator-api"]["preDeployCommand"] == "tickhub migrate up"

    feeder = env["feeder"]
    assert feeder["ORCHESTRATOR_API_KEY"]["fromService"] == {
        "type": "web",
        "name": "orchestrator-api",
        "envVarKey": "API_KEY",
    }
    base = feeder["ORCHESTRATOR_BASE_URL"]["fromService"]
    assert base["name"] == "orchestrator-api" and base["property"] in {"host", "hostport"}

    for svc_name, specs in env.items():
        for key in ("API_KEY", "ORCHESTRATOR_API_KEY"):
            assert "value" not in specs.get(key, {}), f"{svc_name}: no literal {key}"


def test_render_dashboard_static_site() -> None:
    blueprint = load_yaml("render.yaml")
    site = services(blueprint)["dashboard"]
    build = site["buildCommand"]
    assert "requirements.lock" in build and "--no-deps" in build
    assert "make ui" in build
    assert re.search(r"tickhub ui build --out (\S+)", build).group(1) == site["staticPublishPath"]
    assert "--api-base-url" in build and "--realtime-url" in build
    specs = env_specs(blueprint, site)
    assert specs["PYTHON_VERSION"]["value"].startswith("3.11")
    for key in ("VITE_API_BASE_URL", "VITE_REALTIME_URL"):
        assert specs[key].get("sync") is False, f"{key}: prompted, the public URL is not known"


def test_render_free_variant() -> None:
    blueprint = load_yaml("render.free.yaml")
    by_name = services(blueprint)
    assert [db["plan"] for db in blueprint["databases"]] == ["free"]
    assert len(by_name) == 1, "one all-role web service, nothing else"
    (svc,) = by_name.values()
    specs = env_specs(blueprint, svc)
    assert (svc["type"], svc["runtime"], svc["plan"]) == ("web", "docker", "free")
    assert role_of(specs) == "all"
    assert svc["healthCheckPath"] in {p.format(prefix="/api/v1") for p in READINESS["all"]}
    assert "preDeployCommand" not in svc, "free instances have no pre-deploy command"
    assert specs.get("MIGRATE_ON_START", {}).get("value", "1") == "1"
    assert "REDIS_URL" not in specs, "the all role joins roles in memory"
    assert specs["DATABASE_URL"]["fromDatabase"]["name"] == blueprint["databases"][0]["name"]
    assert specs["API_KEY"] == {"key": "API_KEY", "generateValue": True}


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    done = run_tool("hadolint", "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_dockerfile_start_command_is_exec_form_tickhub_run() -> None:
    argv = dockerfile_argv()
    assert argv[-2:] == ["tickhub", "run"], argv
    assert Path(argv[0]).name == "tini", "tini is PID 1 and forwards SIGTERM"
    assert image_command(argv) == ["tickhub", "run"]


def test_dockerfile_argv_helper() -> None:
    exec_form = (
        'FROM a AS b\nCMD ["x"]\n'
        'FROM c\nENTRYPOINT ["/usr/bin/tini", \\\n  "--"]\nCMD ["tickhub", "run"]\n'
    )
    assert dockerfile_argv(exec_form) == ["/usr/bin/tini", "--", "tickhub", "run"]
    assert image_command(dockerfile_argv(exec_form)) == ["tickhub", "run"]
    with pytest.raises(ValueError, match="exec-form"):
        dockerfile_argv('FROM c\nENTRYPOINT ["/usr/bin/tini", "--"]\nCMD tickhub run\n')
    with pytest.raises(ValueError, match="neither"):
        dockerfile_argv('FROM c AS x\nCMD ["x"]\nFROM d\n')


def test_dockerfile_image() -> None:
    text = DOCKERFILE.read_text()
    stages = [args for ins, args in dockerfile_instructions(text) if ins == "FROM"]
    assert len(stages) >= 3, "multi-stage: ui (node), build, runtime"
    assert any(s.startswith("node:") for s in stages), "the dashboard's assets are built in"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=\s*(3\.\d+)", requires).group(1)
    final = final_stage(text)
    assert final[0][1].startswith(f"python:{minor}-slim"), final[0]

    instructions = dict(final)  # the last of each kind
    user = instructions["USER"]
    assert re.fullmatch(r"\d+(:\d+)?", user) and not user.startswith("0"), "non-root numeric"
    health = instructions["HEALTHCHECK"]
    assert _exec_form("HEALTHCHECK", health.partition("CMD")[2].strip()) == [
        "tickhub",
        "healthcheck",
    ]

    env_keys = set()
    for ins, args in final:
        if ins == "ENV":
            env_keys |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", args))
    assert "HOST" in env_keys and "PORT" not in env_keys, "bind 0.0.0.0, port from $PORT"
    assert env_keys - IMAGE_ENV <= KNOWN_ENV, sorted(env_keys - IMAGE_ENV - KNOWN_ENV)

    assert "requirements.lock" in text
    assert re.search(r"pip install [^\n]*--no-deps \.", text), "non-editable install"
    assert not re.search(r"pip install [^\n]*-e \.", text)


def test_dockerignore() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for excluded in (".git", ".venv", "tickhub/ui/node_modules", "tickhub/ui/vendor"):
        assert excluded in patterns, excluded
    # hatchling leaves git-ignored files (tickhub/ui/vendor/) out of the wheel.
    assert ".gitignore" in patterns
    for needed in ("pyproject.toml", "README.md", "requirements.lock", "tickhub", "*"):
        assert needed not in patterns, f"{needed} is needed in the build context"


# --- docker-compose.yaml ------------------------------------------------------------------------


def test_compose_validates_against_compose_spec() -> None:
    done = run_tool(
        "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yaml"
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services() -> None:
    compose = load_yaml("docker-compose.yaml")
    svcs = compose["services"]
    ours = compose_tickhub_services(compose)
    assert {"postgres", "redis"} <= set(svcs)

    roles: dict[str, str] = {}
    for name, svc in ours.items():
        env = compose_env(svc)
        allowed = allowed_env(static=name == "dashboard")
        unknown = set(env) - allowed
        assert not unknown, f"compose {name}: tickhub does not read {sorted(unknown)}"
        if "TICKHUB_ROLE" in env:
            roles[env["TICKHUB_ROLE"]] = name
            assert set(env["TICKHUB_ROLE"].split(",")) <= set(config.ROLES)
    assert {"api", "gateway", "consumer", "feeder"} <= set(roles)

    def published(name: str) -> set[str]:
        return {str(p).split(":")[0] for p in svcs[name].get("ports", [])}

    assert "3030" in published(roles["api"])
    assert "4000" in published(roles["gateway"])
    assert "8080" in published("dashboard")
    assert compose_env(ours[roles["api"]])["PORT"] == "3030"
    assert compose_env(ours[roles["gateway"]])["PORT"] == "4000"

    api_env = compose_env(ours[roles["api"]])
    feeder_env = compose_env(ours[roles["feeder"]])
    assert api_env["API_KEY"] == "dev-key"
    assert feeder_env["ORCHESTRATOR_API_KEY"] == api_env["API_KEY"]
    assert feeder_env["ORCHESTRATOR_BASE_URL"] == f"http://{roles['api']}:3030/api/v1"
    for role in ("api", "consumer", "gateway"):
        env = compose_env(ours[roles[role]])
        assert env["DATABASE_URL"] == "postgres://app:app@postgres:5432/market"
        assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert "noeviction" in svcs["redis"]["command"]
    assert "tickhub ui build" in " ".join(svcs["dashboard"]["command"])


# --- docs/deploy.md ------------------------------------------------------------------------------


def test_deploy_doc_covers_every_variable_and_topic() -> None:
    doc = (ROOT / "docs/deploy.md").read_text()
    keys: set[str] = set()
    for name in BLUEPRINTS:
        blueprint = load_yaml(name)
        for svc in services(blueprint).values():
            keys |= set(env_specs(blueprint, svc))
    for svc in compose_tickhub_services(load_yaml("docker-compose.yaml")).values():
        keys |= set(compose_env(svc))
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"docs/deploy.md does not describe {missing}"
    for topic in (
        "Blueprint",
        "By hand",
        "Migrations",
        "Verification",
        "Scaling",
        "Rollback",
        "Troubleshooting",
        "sslmode=require",
        "render.free.yaml",
    ):
        assert topic in doc, topic
    for name, (_role, health) in SPLIT_SERVICES.items():
        assert name in doc and health in doc
