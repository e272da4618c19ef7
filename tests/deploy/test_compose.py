"""docker-compose.yml and the Dockerfile, read as Docker would (Docker itself cannot run here):
the hub's variables are Settings fields with valid values, MLLP senders are configured, every
service has a passing kind of healthcheck, the hub runs unprivileged from an image without
fixtures/ or demo data, and what that image installs builds and imports."""

from __future__ import annotations

import shlex
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from hub import cli
from hub.config import Settings
from settlement.reference import default_reference
from tests.support.common import ROOT
from tests.support.install import clean_env, install_in_venv, run

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
SERVICES = COMPOSE["services"]
HUB = SERVICES["hub"]
ROOT_USERS = {"", "root", "0"}
NOT_IN_THE_HUB = ("fixtures", "yrdhub_demo", "tests")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def dockerfile_stages(text: str) -> dict[str, dict]:
    """Stage name -> {"parent": image or stage, "steps": [(INSTRUCTION, arguments), ...]}."""
    stages: dict[str, dict] = {}
    current = None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else f"stage{len(stages)}"
            current = stages[name] = {"parent": words[0], "steps": []}
        else:
            current["steps"].append((keyword.upper(), args.strip()))
    return stages


STAGES = dockerfile_stages((ROOT / "Dockerfile").read_text("utf-8"))


def chain(stage: str) -> list[dict]:
    """The stage and those it is built FROM, nearest first."""
    found = []
    while stage in STAGES:
        found.append(STAGES[stage])
        stage = STAGES[stage]["parent"]
    return found


def hub_stage() -> str:
    build = HUB["build"]
    return build.get("target", list(STAGES)[-1]) if isinstance(build, dict) else list(STAGES)[-1]


def copied(stage: str) -> list[str]:
    """Every source path COPY'd into the stage's image (its parents' included)."""
    sources = []
    for s in chain(stage):
        for keyword, args in s["steps"]:
            if keyword in ("COPY", "ADD"):
                source_stage = copied_from(args)
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                sources += copied(source_stage) if source_stage in STAGES else words[:-1]
    return sources


def copied_from(args: str) -> str | None:
    """The stage a COPY takes its files from (``--from=stage``), or None: the build context."""
    return next((w.split("=", 1)[1] for w in shlex.split(args) if w.startswith("--from=")), None)


def test_the_hubs_image_leaves_the_simulated_platforms_out():
    """COPY cannot leave a folder out: the hub copies its source from a stage that deleted
    settlement/simulated/, and copies no settlement/ of the build context itself."""
    steps = [(k, a) for s in chain(hub_stage()) for k, a in s["steps"]]
    stages = [copied_from(a) for k, a in steps if k == "COPY" and copied_from(a) in STAGES]
    deleted = {path for stage in stages for s in chain(stage) for k, a in s["steps"]
               if k == "RUN" and a.startswith("rm -rf ") for path in a.split()[2:]}
    assert "settlement/simulated" in deleted
    direct = [w for k, a in steps if k in ("COPY", "ADD") and copied_from(a) is None
              for w in shlex.split(a)[:-1] if not w.startswith("--")]
    assert [d for d in direct if d.strip("./").split("/")[0] == "settlement"] == []


def test_every_hub_variable_is_a_setting_with_a_valid_value():
    prefix = Settings.model_config["env_prefix"]
    env = environment(HUB)
    ours = {k: v for k, v in env.items() if k.startswith(prefix)}
    unknown = [k for k in ours if k[len(prefix):].lower() not in Settings.model_fields]
    assert unknown == [], f"not in hub/config.py's Settings: {unknown}"
    settings = Settings(**{k[len(prefix):].lower(): v for k, v in ours.items()})  # types checked
    assert set(settings.insurer_urls()) == {"SH", "JS", "ZJ", "AH"}
    for url in settings.insurer_urls().values():
        assert urlsplit(url).hostname in SERVICES, f"{url}: no such service in the compose file"


def test_mllp_senders_are_configured_hospitals():
    settings = Settings(mllp_senders=environment(HUB).get("YRDHUB_MLLP_SENDERS"))
    rules = settings.mllp_sender_rules()
    assert rules, "YRDHUB_MLLP_SENDERS unset: MLLP would accept loopback only, no hospital"
    hospitals = default_reference().hospitals
    assert [h for h, _ in rules if h not in hospitals] == []
    assert settings.mllp_port and f"{settings.mllp_port}:{settings.mllp_port}" in HUB["ports"]


def test_the_hub_runs_unprivileged():
    users = [args for s in chain(hub_stage()) for keyword, args in reversed(s["steps"]) if keyword == "USER"]
    assert users, f"the Dockerfile's {hub_stage()!r} stage sets no USER: it would run as root"
    assert users[0].split(":")[0] not in ROOT_USERS  # the nearest USER is the one in force
    assert str(HUB.get("user", users[0])).split(":")[0] not in ROOT_USERS


def test_the_hubs_image_carries_no_fixtures_or_demo():
    sources = copied(hub_stage())
    assert sources, "the hub's image copies nothing"
    assert [s for s in sources if s.strip("./").split("/")[0] in NOT_IN_THE_HUB] == []
    if any(s.strip("/") in (".", "") for s in sources):  # a COPY of the whole context
        ignored = (ROOT / ".dockerignore").read_text("utf-8").split()
        assert set(NOT_IN_THE_HUB) <= set(ignored)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_waits_for_healthy_ones(name):
    service = SERVICES[name]
    if "healthcheck" not in service:
        pytest.fail(f"{name} has no healthcheck")
    for needed, condition in (service.get("depends_on") or {}).items():
        assert condition == {"condition": "service_healthy"}, f"{name} does not wait for {needed} to be healthy"


def test_the_hub_healthcheck_asks_healthz_on_the_served_port():
    command = " ".join(HUB["healthcheck"]["test"])
    serve = cli.build_parser().parse_args(stage_cmd(hub_stage())[1:])
    assert f"127.0.0.1:{serve.port}/healthz" in command
    assert f"{serve.port}:{serve.port}" in HUB["ports"]


def stage_cmd(stage: str) -> list[str]:
    """The stage's CMD (exec form), its parents' if it has none."""
    for s in chain(stage):
        cmds = [args for keyword, args in s["steps"] if keyword == "CMD"]
        if cmds:
            return yaml.safe_load(cmds[-1])  # a JSON array is YAML too
    raise AssertionError(f"no CMD in {stage}")


def test_the_platforms_run_the_simulate_command():
    platforms = SERVICES["platforms"]
    command = platforms.get("command") or stage_cmd(platforms["build"]["target"])
    assert command[:2] == ["yrdhub", "simulate"]
    assert {"fixtures", "yrdhub_demo"} & {s.strip("./").split("/")[0] for s in copied(platforms["build"]["target"])}
    ports = {int(p) for p in platforms["expose"]}
    base = int(command[command.index("--base-port") + 1])
    assert ports == {base + i for i in range(4)}  # SH, JS, ZJ, AH on consecutive ports


def test_what_the_hub_image_copies_builds_without_fixtures_or_demo_and_imports(tmp_path):
    """Emulates the hub stage: a wheel of only its COPY sources holds no demo data or fixtures,
    and installed (as its ``pip install`` does) the hub's app imports from it."""
    src = tmp_path / "src"
    src.mkdir()
    for source in copied(hub_stage()):
        path = ROOT / source
        (shutil.copytree if path.is_dir() else shutil.copy)(path, src / Path(source).name)
    venv = install_in_venv(src, tmp_path)
    [wheel] = (tmp_path / "wheels").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.split("/")[0] in NOT_IN_THE_HUB] == []
    assert "hub/app.py" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(str(venv / "bin" / "python"), "-c", "import hub.app; print(hub.app.__file__)",
                cwd=elsewhere, env=clean_env()).stdout.strip()
    assert where.startswith(str(venv))
