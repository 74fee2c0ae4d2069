"""`python -m dataflows`: list the flows and their settings, check a configuration, run a flow.

    python -m dataflows --help             the flows, their environment variables and defaults
    python -m dataflows check ztf          before a night: weights, Kafka, MongoDB, Fritz, Slack
    python -m dataflows run ztf -w 4       = python -m bytewax.run dataflows.ztf -w 4
    python -m dataflows ztf -w 4           the same (the container's entrypoint)
    python -m dataflows replay-dead-letters results/oracle_ztf_deadletters.jsonl

The variables listed are the fields of the flows' settings models
(operators/runtime/config.py, operators/runtime/fritz_settings.py, operators/runtime/slack_settings.py,
operators/vra/config.py), with their defaults and descriptions, so the list
cannot drift from what the flows read; `--markdown-table` prints docs/configuration.md's
configuration table from the same models. Flows are imported lazily: `--help`
never loads torch, and a flow whose module is not there yet is shown as missing.
Secret values are never printed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ the flows


@dataclass(frozen=True)
class FlowInfo:
    name: str
    module: str
    summary: str
    survey: Optional[str] = None  # key of operators.oracle.surveys.SURVEYS for the ORACLE flows
    fritz: bool = False  # the flow annotates on Fritz (reads FRITZ_*)


FLOWS: dict[str, FlowInfo] = {
    "ztf": FlowInfo("ztf", "dataflows.ztf", "ZTF alerts that passed a BOOM filter, classified by ORACLE",
                    survey="ZTF", fritz=True),
    "lsst": FlowInfo("lsst", "dataflows.lsst", "LSST alerts that passed a BOOM filter, classified by ORACLE",
                     survey="LSST"),
    "fink_vra": FlowInfo("fink_vra", "dataflows.fink_vra", "Fink alerts -> the VRA active-learning feature table"),
}

# ------------------------------------------------------------------ variables, from the settings models


def _survey(key: Optional[str]):
    if key is None:
        return None
    from operators.oracle.surveys import SURVEYS

    return SURVEYS.get(key)


def settings_models(info: FlowInfo) -> list:
    """The settings models the flow reads, in the order `--help` lists them."""
    if info.survey is not None:
        from operators.runtime.config import oracle_models

        return oracle_models(_survey(info.survey), fritz=info.fritz)
    from operators.vra.config import FINK_VRA_MODELS

    return list(FINK_VRA_MODELS)


def flow_variables(info: FlowInfo):
    """Every environment variable the flow reads (`operators.runtime.settings.Variable`), in listing order."""
    from operators.runtime.settings import variables

    return variables(settings_models(info))


def describe(name: str, info: FlowInfo) -> str:
    return next((v.description for v in flow_variables(info) if v.name == name), "")


def markdown_table() -> str:
    """docs/configuration.md's table, from the models of every available flow."""
    from operators.runtime.settings import markdown_table as table

    return table({info.name: settings_models(info) for info in FLOWS.values() if flow_available(info)[0]})


def flow_available(info: FlowInfo) -> tuple[bool, str]:
    import importlib.util

    try:
        spec = importlib.util.find_spec(info.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, f"not available: {info.module.replace('.', '/')}.py is missing"
    if info.survey is not None and _survey(info.survey) is None:
        return False, f"not available: no survey {info.survey} in operators/oracle/surveys.py"
    return True, ""


# ------------------------------------------------------------------ help

USAGE = """\
usage: python -m dataflows (or: alertflow) [--help | --version | --markdown-table] {check,run,backfill,compare,listen} FLOW [ARGS...]
       python -m dataflows replay-dead-letters FILE
       python -m dataflows FLOW [ARGS...]          (= run FLOW)

  check FLOW         check the configuration before a night; one line per check, exit 1 on any FAIL
  run FLOW [ARGS]    python -m bytewax.run dataflows.FLOW [ARGS]: ARGS are bytewax's own
                     (-w N workers per process; -i ID -a "hostA:2101;hostB:2101" for a cluster);
                     FLOW --help: one flow's options and variables
  backfill SURVEY --since T --until T [...]   classify past alert documents (backfill --help)
  compare A.csv B.csv [--html out.html]       what changed between two results files (compare --help)
  listen ztf|lsst [--where "SN-Ia>0.8"] [--save DIR] [...]   print the results topic (listen --help)
  replay-dead-letters FILE [--survey ztf|lsst]
                     publish the dead letters' payloads back to KAFKA_TOPIC (KAFKA_BROKERS set),
                     or re-run them through the flow here
"""


def help_text() -> str:
    lines = [USAGE, "flows:"]
    for info in FLOWS.values():
        ok, why = flow_available(info)
        lines.append(f"  {info.name:<10} {info.summary}" + ("" if ok else f"  [{why}]"))
    for info in FLOWS.values():
        if not flow_available(info)[0]:
            continue
        from operators.runtime.settings import help_lines

        lines.append(f"\nconfiguration of {info.name} (environment variables, default in brackets):")
        lines.extend(help_lines(settings_models(info)))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ check


from dataflows.preflight import CheckResult  # noqa: E402 - light: no torch at import


def failed_setting(name: str, exc: ValueError) -> CheckResult:
    """A settings model refused a variable: its one line, split into what and the fix."""
    detail, _, fix = str(exc).partition(" -> ")
    return CheckResult(name, False, detail, fix or "fix that variable (python -m dataflows --help)")


def _short(exc: BaseException, redact: Callable[[str], str] = lambda s: s, limit: int = 200) -> str:
    text = redact(f"{type(exc).__name__}: {exc}").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_kafka(brokers: Sequence[str], topic: str, client_config: Mapping[str, Any], timeout_s: float = 5.0,
                redact: Callable[[str], str] = lambda s: s, fix_var: str = "KAFKA_BROKERS") -> CheckResult:
    """The brokers answer within `timeout_s` and hold `topic`."""
    from confluent_kafka.admin import AdminClient

    conf = {k: v for k, v in client_config.items() if k not in {"group.id", "enable.auto.commit", "auto.offset.reset"}}
    conf.update({"bootstrap.servers": ",".join(brokers), "log_level": 0})  # errors are reported below, not by librdkafka
    where = ",".join(brokers)
    try:
        meta = AdminClient(conf).list_topics(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - KafkaException on timeout, ValueError on bad settings
        return CheckResult("kafka", False, f"{where} unreachable within {timeout_s:.0f} s ({_short(exc, redact)})",
                           f"check {fix_var}, the network and KAFKA_OPT_* security settings")
    t = meta.topics.get(topic)
    if t is None or t.error is not None:
        why = "does not exist" if t is None else _short(Exception(str(t.error)), redact)
        return CheckResult("kafka", False, f"{where} answers, but topic {topic} {why}",
                           "check the topic name (KAFKA_TOPIC) and that BOOM publishes to it")
    return CheckResult("kafka", True, f"{where} topic {topic}: {len(t.partitions)} partition(s) "
                                      f"(at most that many workers read it)")


def check_filter(kafka, filter_name: str, timeout_s: float = 5.0,
                 redact: Callable[[str], str] = lambda s: s) -> CheckResult:
    """ORACLE_FILTER is among the filters of the topic's most recent messages (operators/oracle/filter_names.py)."""
    from operators.oracle import filter_names

    try:
        values = filter_names.recent_values({"bootstrap.servers": ",".join(kafka.brokers), **kafka.client_config},
                                            kafka.topic, timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 - KafkaException: the kafka line above already says more
        return CheckResult("filter", False, f"cannot read recent messages of {kafka.topic} ({_short(exc, redact)})",
                           "check the KAFKA_OPT_* security settings (reading needs a consumer's rights)")
    ok, detail, fix = filter_names.filter_result(filter_name, *filter_names.names_in(values), kafka.topic)
    return CheckResult("filter", ok, detail, fix)


def check_metrics(env: Mapping[str, str]) -> CheckResult:
    from operators.runtime.config import ConfigError, MetricsSettings

    try:
        m = MetricsSettings.read(env)
    except ConfigError as exc:
        return failed_setting("metrics", exc)
    parts = [f"exporter on :{m.port}/metrics"] if m.port is not None else []
    if m.api_enabled:
        parts.append(f"bytewax API :{m.api_port}/metrics")
    if not parts:
        return CheckResult("metrics", True, "off (set BYTEWAX_DATAFLOW_API_ENABLED=true to serve /metrics)")
    return CheckResult("metrics", True, ", ".join(parts))


CHECKED_APART = ("fritz", "slack", "metrics")  # concerns whose own check line names a bad variable


def check_oracle(info: FlowInfo, env: Mapping[str, str], timeout_s: float = 5.0) -> list[CheckResult]:
    """The flow's own validation (dataflows/preflight.py: weights, input, outputs, recovery),
    then the services it will talk to."""
    from operators.runtime.config import Settings, read_concerns
    from dataflows.preflight import validate

    survey = _survey(info.survey)
    # Every concern read as the flow reads it (so `check` fails exactly where the flow would);
    # a Fritz, Slack or metrics problem is its own line below, and the rest is checked without it.
    parts, errors = read_concerns(survey, env)
    refused = [failed_setting("config", exc) for concern, exc in errors.items() if concern not in CHECKED_APART]
    if refused:
        return refused
    settings = Settings.compose(survey, parts)
    out: list[CheckResult] = []
    o = settings.oracle
    out.append(CheckResult("config", True, f"survey {survey.name}, filter {o.filter_name}, batch {o.batch_size}, "
                                           + (f"{o.shards} shards" if o.shards else "one batch key per worker")))
    local, model = validate(settings, survey)
    out.extend(local)
    if settings.kafka is not None:
        k = settings.kafka
        out.append(check_kafka(k.brokers, k.topic, k.client_config, timeout_s, settings.redact))
        if out[-1].ok:
            out.append(check_filter(k, settings.oracle.filter_name, timeout_s, settings.redact))
    out.append(check_mongo(settings, survey, model) if settings.mongo is not None else
               CheckResult("store", True, f"bundled documents in {settings.outputs.sample_dir} "
                                          f"(set MONGODB_URI or BOOM_DATABASE__HOST for BOOM's MongoDB)"))
    from operators.sinks.results_outputs import check_results  # the results topic and collection (issue 25)
    out.extend(CheckResult(c.name, c.ok, c.detail, c.fix) for c in check_results(settings, survey))
    if survey.fritz:
        out.append(check_fritz(env, timeout_s))
    out.append(check_slack(env, survey.slack_channel_env))
    out.append(check_metrics(env))
    return out


def check_mongo(settings, survey, model=None) -> CheckResult:
    from operators.oracle.mongo_store import acquire_client, release_client

    m = settings.mongo
    try:
        client = acquire_client(m)
        try:
            client.admin.command("ping")
            present = set(client[m.database].list_collection_names())
        finally:
            release_client(m)
    except Exception as exc:  # noqa: BLE001 - ConfigError, ServerSelectionTimeoutError, OperationFailure
        return CheckResult("mongodb", False, f"{m.describe()}: {_short(exc, settings.redact)}",
                           "check MONGODB_URI or BOOM_DATABASE__HOST/PORT/USERNAME/PASSWORD/TLS and the network")
    c = survey.collections
    wanted = [c.alerts, c.aux] + ([c.cutouts] if model is not None and model.needs_stamp else [])
    missing = [name for name in wanted if name not in present]
    if missing:
        return CheckResult("mongodb", False, f"{m.describe()} answers, but has no {', '.join(missing)}",
                           "check BOOM_DATABASE__NAME (the database BOOM writes to)")
    return CheckResult("mongodb", True, f"{m.describe()}: {', '.join(wanted)} present")


def check_fritz(env: Mapping[str, str], timeout_s: float = 5.0) -> CheckResult:
    """The token works, its user may annotate and is a member of every FRITZ_GROUP_IDS group
    (otherwise Fritz accepts the annotations but never shows them to us again: after a
    restart every update fails)."""
    try:
        from operators.sinks.fritz_client import FritzAuthError, FritzClient, FritzError
        from operators.runtime.fritz_settings import FritzConfig

        cfg = FritzConfig.from_env(env)
    except ImportError:
        return CheckResult("fritz", True, "client not installed in this tree (operators/sinks/fritz_client.py)")
    except ValueError as exc:
        detail, _, fix = str(exc).partition(" -> ")
        return CheckResult("fritz", False, detail, fix or "fix the FRITZ_* variable named")
    if not cfg.enabled:
        return CheckResult("fritz", True, "off (FRITZ_TOKEN unset)")
    client = FritzClient(cfg.model_copy(update={"timeout": timeout_s, "max_retries": 1, "backoff_429": 0.5}))
    try:
        account = client.verify_account()
    except FritzAuthError:
        return CheckResult("fritz", False, f"{cfg.url} refuses FRITZ_TOKEN (401)", "check FRITZ_TOKEN")
    except FritzError as exc:
        return CheckResult("fritz", False, f"{cfg.url}: {_short(exc, client.scrub)}", "check FRITZ_URL and the network")
    finally:
        client.close()
    groups = ",".join(map(str, cfg.group_ids))
    if "Annotate" not in account.permissions and "System admin" not in account.permissions:
        return CheckResult("fritz", False, f"Fritz user {account.username} lacks the Annotate ACL",
                           "ask a Fritz admin for the Annotate ACL")
    missing = [g for g in cfg.group_ids if g not in account.group_ids]
    if missing:
        return CheckResult("fritz", False, f"Fritz user {account.username} is not a member of group(s) "
                                           f"{','.join(map(str, missing))}: its annotations there would be invisible "
                                           f"to it, and never updated after a restart",
                           "add the user to those groups on Fritz, or fix FRITZ_GROUP_IDS")
    return CheckResult("fritz", True, f"{cfg.url}: user {account.username} may annotate, member of groups {groups}; "
                                      f"origin {cfg.origin}")


def check_slack(env: Mapping[str, str], channel_var: str) -> CheckResult:
    """POST_TO_SLACK=true needs SLACK_BOT_TOKEN and this survey's channel (no request is made)."""
    from operators.runtime.slack_settings import SlackConfig

    try:
        cfg = SlackConfig.from_env(env, channel_variables=(channel_var,))
    except ValueError as exc:
        return CheckResult("slack", False, str(exc).partition(" -> ")[0], "set the variable named, or POST_TO_SLACK=false")
    if not cfg.enabled:
        return CheckResult("slack", True, "off (POST_TO_SLACK not true)")
    if not cfg.channel_named(channel_var):
        return CheckResult("slack", False, f"POST_TO_SLACK=true but {channel_var} unset",
                           f"set {channel_var}, or POST_TO_SLACK=false")
    return CheckResult("slack", True, f"SLACK_BOT_TOKEN and {channel_var} set")


def check_fink_vra(env: Mapping[str, str], timeout_s: float = 5.0) -> list[CheckResult]:
    try:
        from operators.vra.steps import FinkVraConfig

        cfg = FinkVraConfig.from_env(env)
    except ImportError as exc:
        return [CheckResult("config", False, f"cannot import the Fink VRA flow: {_short(exc)}",
                            "pip install 'alertflow[vetting]' (the Fink VRA and active-learning extra)")]
    except ValueError as exc:
        return [CheckResult("config", False, str(exc), "fix that variable (python -m dataflows --help)")]
    redact = cfg.redact
    from dataflows.preflight import validate_fink_vra

    out = [CheckResult("config", True, f"topic {cfg.topic}, output {cfg.out_dir}")]
    out.extend(validate_fink_vra(cfg))
    if cfg.uses_kafka:
        out.append(check_kafka(cfg.kafka_brokers, cfg.topic, cfg.kafka_config, timeout_s, redact,
                               fix_var="FINK_VRA_KAFKA_BROKERS"))
    out.append(CheckResult("sherlock", True, "LASAIR_TOKEN set" if cfg.lasair_token else
                           "off (LASAIR_TOKEN unset: no AGN/VS drops, sep_arcsec NaN)"))
    out.append(check_metrics(env))
    return out


def run_checks(flow: str, env: Mapping[str, str] = os.environ, timeout_s: float = 5.0) -> list[CheckResult]:
    info = FLOWS.get(flow)
    if info is None:
        return [CheckResult("flow", False, f"unknown flow {flow!r}", f"use one of {', '.join(FLOWS)}")]
    ok, why = flow_available(info)
    if not ok:
        return [CheckResult("flow", False, f"{flow}: {why}", "update the checkout")]
    if info.survey is not None:
        return check_oracle(info, env, timeout_s)
    return check_fink_vra(env, timeout_s)


# ------------------------------------------------------------------ run


def bytewax_command(flow: str, args: Sequence[str], python: str = sys.executable) -> list[str]:
    """`run FLOW ARGS` is `python -m bytewax.run dataflows.FLOW ARGS`, nothing more: recovery
    (directory, partitions on first start, snapshot interval) is set up by the flow itself
    from its settings (operators/runtime/recovery.py), so it is the same however the flow is started."""
    return [python, "-m", "bytewax.run", FLOWS[flow].module, *args]


def run(flow: str, args: Sequence[str]) -> int:
    info = FLOWS.get(flow)
    if info is None:
        print(f"unknown flow {flow!r}; flows: {', '.join(FLOWS)}", file=sys.stderr)
        return 2
    ok, why = flow_available(info)
    if not ok:
        print(f"{flow}: {why}", file=sys.stderr)
        return 2
    from dataflows.cli import prepare_run

    from operators.runtime.settings import help_lines

    stop = prepare_run(info, args, lambda: help_lines(settings_models(info)))  # --help, extras, bad options
    if stop is not None:
        return stop
    argv = bytewax_command(flow, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # bytewax becomes this process: signals (docker stop, Ctrl-C) reach it directly
    return 0  # not reached


# ------------------------------------------------------------------ main


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        sys.stdout.write(help_text())
        return 0 if argv else 2
    if argv[0] in {"--version", "-V"}:
        from dataflows.cli import version_text

        sys.stdout.write(version_text())
        return 0
    if argv[0] == "--markdown-table":
        sys.stdout.write(markdown_table())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "check":
        if len(rest) != 1 or rest[0].startswith("-"):
            print("usage: python -m dataflows check FLOW", file=sys.stderr)
            return 2
        results = run_checks(rest[0])
        for r in results:
            print(r.line(), flush=True)
        failed = sum(not r.ok for r in results)
        print(f"{rest[0]}: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
        return 1 if failed else 0
    if command == "replay-dead-letters":
        from dataflows.replay import main as replay_main

        return replay_main(rest)
    if command == "run":
        if not rest:
            print("usage: python -m dataflows run FLOW [bytewax.run options]", file=sys.stderr)
            return 2
        return run(rest[0], rest[1:])
    if command == "backfill":
        from dataflows.backfill import main as backfill

        return backfill(rest)
    if command == "listen":
        from dataflows.listen import main as listen

        return listen(rest)
    if command == "compare":
        from operators.oracle.compare import main as compare

        return compare(rest)
    if command in FLOWS:
        return run(command, rest)
    print(f"unknown command or flow {command!r}\n", file=sys.stderr)
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
