"""`python -m dataflows`: list the flows and their settings, check a configuration, run a flow.

    python -m dataflows --help             the flows, their environment variables and defaults
    python -m dataflows check ztf          before a night: weights, Kafka, MongoDB, Fritz, Slack
    python -m dataflows run ztf -w 4       = python -m bytewax.run dataflows.ztf -w 4
    python -m dataflows ztf -w 4           the same (the container's entrypoint)
    python -m dataflows replay-dead-letters results/oracle_ztf_deadletters.jsonl

The variables listed are read from the configuration readers' source
(`Settings.from_env` in operators/config.py, `FritzConfig.from_env` in operators/fritz_config.py, `SlackConfig.from_env`,
`FinkVraConfig.from_env`) by inspection, so the list cannot drift from what the
flows read; `DESCRIPTIONS` below only adds a sentence to each. Flows are
imported lazily: `--help` never loads torch, and a flow whose module is not
there yet is shown as missing. Secret values are never printed.
"""

from __future__ import annotations

import ast
import os
import re
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
    survey: Optional[str] = None  # key of operators.surveys.SURVEYS for the ORACLE flows
    readers: tuple[str, ...] = ()  # source files whose environment reads are listed
    extra: tuple[str, ...] = ()  # variables read elsewhere (not found by inspection)
    skip: tuple[str, ...] = ()  # variables its readers read only for another flow


OPS_VARIABLES = ("ALERTFLOW_METRICS_PORT", "BYTEWAX_DATAFLOW_API_ENABLED", "BYTEWAX_DATAFLOW_API_PORT")

FLOWS: dict[str, FlowInfo] = {
    "ztf": FlowInfo("ztf", "dataflows.ztf", "ZTF alerts that passed a BOOM filter, classified by ORACLE",
                    survey="ZTF", readers=("operators/config.py", "operators/fritz_config.py", "operators/slack.py"),
                    extra=("KAFKA_OPT_*", *OPS_VARIABLES), skip=("ORACLE_LSST_FORCED_PHOTOMETRY",)),
    "lsst": FlowInfo("lsst", "dataflows.lsst", "LSST alerts that passed a BOOM filter, classified by ORACLE",
                     survey="LSST", readers=("operators/config.py", "operators/slack.py"),
                     extra=("KAFKA_OPT_*", *OPS_VARIABLES)),
    "fink_vra": FlowInfo("fink_vra", "dataflows.fink_vra", "Fink alerts -> the VRA active-learning feature table",
                         readers=("operators/fink_vra.py",), extra=("KAFKA_UNREACHABLE_EXIT_S", *OPS_VARIABLES)),
}

# One sentence per variable; names and defaults come from the readers themselves.
DESCRIPTIONS = {
    # ORACLE flows (operators/config.py)
    "KAFKA_BROKERS": "Kafka bootstrap servers (comma-separated); unset: replay the bundled sample and exit",
    "KAFKA_TOPIC": "BOOM filter-results topic",
    "KAFKA_GROUP_ID": "Kafka consumer group id",
    "KAFKA_STARTING_OFFSET": "where a first start reads from: beginning or end",
    "KAFKA_OPT_*": "any librdkafka setting: KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL sets security.protocol",
    "MONGODB_URI": "BOOM's MongoDB as a full URI (secret); wins over BOOM_DATABASE__*",
    "BOOM_DATABASE__HOST": "BOOM's MongoDB host; with MONGODB_URI unset and this unset: bundled documents",
    "BOOM_DATABASE__PORT": "BOOM's MongoDB port",
    "BOOM_DATABASE__NAME": "BOOM's database name",
    "BOOM_DATABASE__USERNAME": "MongoDB user",
    "BOOM_DATABASE__PASSWORD": "MongoDB password (secret)",
    "BOOM_DATABASE__TLS": "connect to MongoDB with TLS",
    "MONGODB_TIMEOUT_MS": "MongoDB server-selection / socket timeout",
    "MONGODB_RETRIES": "attempts per batch before the flow stops on a store outage; 0: wait until MongoDB is back",
    "ORACLE_FILTER": "BOOM filter whose passing alerts are classified",
    "ORACLE_{survey.name}_WEIGHTS": "ORACLE checkpoint (.pth)",
    "ORACLE_{survey.name}_SHADOW_WEIGHTS": "a second checkpoint run on the same batches into oracle_<survey>_shadow_results.csv; never posts",
    "ORACLE_MODEL_KIND": "btsv2, lsst_lite or omni; unset: detected from the checkpoint",
    "ORACLE_BATCH_SIZE": "alerts per model batch (at most)",
    "ORACLE_BATCH_TIMEOUT_S": "seconds a partial batch waits before it is classified",
    "ORACLE_SHARDS": "batch keys; the batch/model stages spread over this many workers at most (keys are hashed to workers: many keys balance them)",
    "ALERTFLOW_RESULTS_DIR": "results CSV and dead-letter files",
    "ALERTFLOW_LOGS_DIR": "log files (one per flow, rotated at 50 MB, 5 kept)",
    "ALERTFLOW_SAMPLE_DIR": "bundled sample replayed without Kafka",
    "ALERTFLOW_LOG_LEVEL": "DEBUG, INFO, WARNING",
    "ORACLE_LSST_FORCED_PHOTOMETRY": "add BOOM's forced photometry (fp_hists) as flag-0 epochs",
    "KAFKA_UNREACHABLE_EXIT_S": "seconds without a Kafka broker before the flow exits with status 3 (for a supervisor); 0: retry for ever",
    "SLACK_API_URL": "Slack Web API base URL (a proxy or a test server); unset: slack_sdk's default",
    "ORACLE_TORCH_THREADS": "torch threads per process (workers are threads already; use processes for more cores)",
    "ORACLE_PRECISION": "Omni's image network: fp32, or bf16 (opt-in: faster where the CPU has bf16, probabilities move slightly; bench/bench_flow.py prints by how much)",
    "ORACLE_DEVICE": "where the model runs: cpu, cuda or mps (the model and each batch move there)",
    "ALERTFLOW_RECOVERY": "bytewax recovery (resume from the last snapshot after a restart); default on with Kafka",
    "ALERTFLOW_RECOVERY_DIR": "recovery partitions (created on first start; keep on a persistent disk)",
    "ALERTFLOW_RECOVERY_PARTITIONS": "recovery partitions created on first start",
    "ALERTFLOW_SNAPSHOT_INTERVAL_S": "seconds between recovery snapshots (a restart replays at most this much)",
    "ALERTFLOW_BACKUP_INTERVAL_S": "seconds old snapshots are kept (for backups of the recovery directory)",
    # Fritz (operators/fritz_config.py)
    "FRITZ_TOKEN": "Fritz API token (secret); set: annotate objects on Fritz, unset: Fritz off",
    "FRITZ_URL": "Fritz (SkyPortal) base URL; https:// (http:// only to this machine or with FRITZ_ALLOW_INSECURE)",
    "FRITZ_ALLOW_INSECURE": "true: allow an http:// FRITZ_URL on another host (the token travels unencrypted)",
    "FRITZ_ORIGIN": "annotation origin",
    "FRITZ_GROUP_IDS": "groups that see the annotations (comma-separated; default 1959)",
    "FRITZ_DECIMALS": "decimals of annotated probabilities",
    "FRITZ_RATE": "requests per second for the token, whole cluster (SkyPortal allows 5)",
    "FRITZ_BURST": "request burst (SkyPortal allows 10)",
    "FRITZ_TIMEOUT": "seconds per request",
    "FRITZ_MAX_RETRIES": "retries on 429 (1, 2, 4 ... s), 5xx and timeouts",
    "FRITZ_WORKERS": "annotation requests in flight",
    "FRITZ_MAX_PENDING": "objects waiting to be annotated before the oldest is dropped",
    "FRITZ_NOT_FOUND_TTL": "seconds to skip objects Fritz does not know (404)",
    "FRITZ_CONTEXT_TTL": "seconds Fritz classifications are cached per object",
    "FRITZ_CONTEXT_TIMEOUT": "seconds to wait for Fritz classifications of an object",
    # Slack
    "POST_TO_SLACK": "post classifications to Slack (true/false)",
    "SLACK_BOT_TOKEN": "Slack bot token (secret); needed when POST_TO_SLACK=true",
    "SLACK_ORACLE_CHANNEL_ID": "Slack channel id for ZTF posts",
    "SLACK_ORACLE_LSST_CHANNEL_ID": "Slack channel id for LSST posts",
    "SLACK_MIN_LEAF_PROBABILITY": "post only alerts whose predicted leaf has at least this probability",
    "BABAMUL_URL": "Babamul base URL (LSST links in Slack posts)",
    # operations
    "ALERTFLOW_METRICS_PORT": "serve Prometheus /metrics on this port (for runs without bytewax's API server)",
    "BYTEWAX_DATAFLOW_API_ENABLED": "true: bytewax serves /metrics (ours and its own) on its API port",
    "BYTEWAX_DATAFLOW_API_PORT": "bytewax API server port (one per process: give each process on a host its own)",
    # Fink VRA (operators/fink_vra.py)
    "FINK_VRA_KAFKA_BROKERS": "Fink's Kafka servers; unset: the bundled Fink alerts",
    "FINK_VRA_INPUT": "Fink Avro/Parquet files to read instead (a file, a directory or a glob; format from content)",
    "FINK_VRA_KAFKA_USERNAME": "Fink Kafka user (SASL SCRAM-SHA-512)",
    "FINK_VRA_KAFKA_PASSWORD": "Fink Kafka password (secret)",
    "FINK_VRA_KAFKA_GROUP_ID": "Kafka consumer group id",
    "FINK_VRA_KAFKA_STARTING_OFFSET": "beginning or end",
    "FINK_VRA_KAFKA_TAIL": "keep waiting for new alerts (true) or stop at the end (false)",
    "FINK_VRA_TOPIC": "Fink topic",
    "FINK_VRA_STREAM_FILTER": "apply Fink's VRA cut (default: on with Kafka, off for the bundled alerts)",
    "FINK_VRA_SCHEMA_PATH": "Avro schema for schemaless messages",
    "FINK_VRA_EMBEDDED_DIR": "bundled Fink alerts",
    "FINK_VRA_EMBEDDED_GLOB": "bundled files to read",
    "FINK_VRA_SHERLOCK_TIMEOUT": "seconds per Lasair Sherlock request",
    "FINK_VRA_SHERLOCK_RETRIES": "retries per Sherlock request",
    "FINK_VRA_SFD_DIR": "SFD dust maps directory",
    "FINK_VRA_OUT_DIR": "Parquet feature dataset",
    "FINK_VRA_DEADLETTERS": "dead-letter file",
    "FINK_VRA_OUT_PARTITIONS": "Parquet output partitions",
    "LASAIR_TOKEN": "Lasair token (secret); unset: no Sherlock lookups, sep_arcsec NaN",
    "LASAIR_API_URL": "Lasair API base URL",
}

OPS_DEFAULTS = {
    "BYTEWAX_DATAFLOW_API_ENABLED": "false",
    "BYTEWAX_DATAFLOW_API_PORT": "3030",
    "KAFKA_UNREACHABLE_EXIT_S": "0.0",
}

# ------------------------------------------------------------------ variables, by inspection of the readers

_READER_FUNCS = {"env_str", "env_int", "env_float", "env_bool",
                 "getenv"}
_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\{[a-z_.]+\}[A-Z0-9_]*)*$")


@dataclass(frozen=True)
class Variable:
    name: str
    default: Optional[str]  # as text, None when unset by default
    source: str  # the reader's file


def _is_reader(call: ast.Call) -> bool:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id in _READER_FUNCS
    return isinstance(f, ast.Attribute) and f.attr in {"get", "getenv"} and not call.keywords


def _name_arg(call: ast.Call) -> Optional[tuple[int, str]]:
    """Index and template of the variable-name argument (`ORACLE_{survey.name}_WEIGHTS`)."""
    for i, arg in enumerate(call.args[:2]):
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            text = arg.value
        elif isinstance(arg, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                           for v in arg.values)
        else:
            continue
        if _NAME_RE.match(text):
            return i, text
        return None
    return None


def scan_readers(path: Path) -> list[tuple[str, Optional[ast.expr]]]:
    """`(name template, default expression)` for every environment read in a source file."""
    tree = ast.parse(path.read_text(), str(path))
    or_defaults: dict[int, ast.expr] = {}
    for node in ast.walk(tree):  # `_env(env, "X") or "default"`
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) >= 2:
            for inner in ast.walk(node.values[0]):
                if isinstance(inner, ast.Call):
                    or_defaults.setdefault(id(inner), node.values[-1])
    found: dict[str, Optional[ast.expr]] = {}
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset)):
        if not (isinstance(node, ast.Call) and _is_reader(node)):
            continue
        hit = _name_arg(node)
        if hit is None:
            continue
        i, name = hit
        default = node.args[i + 1] if len(node.args) > i + 1 else None
        if default is None or (isinstance(default, ast.Constant) and default.value in (None, "")):
            default = or_defaults.get(id(node), default)
        if name not in found or found[name] is None:
            found[name] = default
    return list(found.items())


def _module_globals(path: Path) -> dict:
    rel = path.resolve().relative_to(REPO_ROOT).with_suffix("")
    import importlib

    return vars(importlib.import_module(".".join(rel.parts)))


def _show(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if isinstance(value, Path) or (isinstance(value, str) and value.startswith(str(REPO_ROOT))):
        p = Path(value)
        try:
            return str(p.relative_to(REPO_ROOT))
        except ValueError:
            return str(p)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _evaluate(expr: Optional[ast.expr], path: Path, names: dict) -> Optional[str]:
    if expr is None:
        return None
    try:
        return _show(ast.literal_eval(expr))
    except (ValueError, TypeError, SyntaxError):
        pass
    code = compile(ast.Expression(expr), str(path), "eval")
    for namespace in (lambda: names, lambda: {**_module_globals(path), **names}):
        try:
            return _show(eval(code, {"__builtins__": {"str": str, "int": int, "float": float}}, namespace()))
        except Exception:  # noqa: BLE001 - fall back to the source text
            continue
    return "varies"


def _render(template: str, names: dict) -> str:
    def sub(m: re.Match) -> str:
        try:
            return str(eval(m.group(1), {"__builtins__": {}}, names))
        except Exception:  # noqa: BLE001
            return m.group(0)

    return re.sub(r"\{([a-z_.]+)\}", sub, template)


def _survey(key: Optional[str]):
    if key is None:
        return None
    from operators.surveys import SURVEYS

    return SURVEYS.get(key)


def flow_variables(info: FlowInfo) -> list[Variable]:
    """Every environment variable the flow reads, with its default, in reading order."""
    names = _names(info)
    out: dict[str, Variable] = {}
    for rel in info.readers:
        path = REPO_ROOT / rel
        if not path.exists():
            continue
        for template, default in scan_readers(path):
            name = _render(template, names)
            if name in info.skip:
                continue
            out.setdefault(name, Variable(name, _evaluate(default, path, names), rel))
    for template in info.extra:
        name = _render(template, names)
        out.setdefault(name, Variable(name, OPS_DEFAULTS.get(name), "dataflows/__main__.py"))
    return list(out.values())


def _names(info: FlowInfo) -> dict:
    """What `{...}` in a variable-name template may refer to."""
    survey = _survey(info.survey)
    names = {"survey": survey, "name": survey.name.lower() if survey else ""}
    if survey is not None:
        names["slack_channel_env"] = survey.slack_channel_env
    return names


def describe(name: str, info: FlowInfo) -> str:
    names = _names(info)
    for template, text in DESCRIPTIONS.items():
        if template == name or ("{" in template and _render(template, names) == name):
            return text
    return ""


def flow_available(info: FlowInfo) -> tuple[bool, str]:
    import importlib.util

    try:
        spec = importlib.util.find_spec(info.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, f"not available: {info.module.replace('.', '/')}.py is missing"
    if info.survey is not None and _survey(info.survey) is None:
        return False, f"not available: no survey {info.survey} in operators/surveys.py"
    return True, ""


# ------------------------------------------------------------------ help

USAGE = """\
usage: python -m dataflows [--help] {check,run,backfill,compare} FLOW [ARGS...]
       python -m dataflows replay-dead-letters FILE
       python -m dataflows FLOW [ARGS...]          (= run FLOW)

  check FLOW         check the configuration before a night; one line per check, exit 1 on any FAIL
  run FLOW [ARGS]    python -m bytewax.run dataflows.FLOW [ARGS]: ARGS are bytewax's own
                     (-w N workers per process; -i ID -a "hostA:2101;hostB:2101" for a cluster)
  backfill SURVEY --since T --until T [...]   classify past alert documents (backfill --help)
  compare A.csv B.csv [--html out.html]       what changed between two results files (compare --help)
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
        lines.append(f"\nconfiguration of {info.name} (environment variables, default in brackets):")
        variables = flow_variables(info)
        width = max(len(v.name) for v in variables)
        shown = [f"[{v.default}]" if v.default is not None else "[unset]" for v in variables]
        dwidth = min(30, max(len(d) for d in shown))
        for v, default in zip(variables, shown):
            lines.append(f"  {v.name:<{width}}  {default:<{dwidth}}  {describe(v.name, info)}".rstrip())
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ check


from operators.preflight import CheckResult  # noqa: E402 - light: no torch at import


def _truthy(env: Mapping[str, str], name: str) -> Optional[bool]:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r}: use true or false")


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


def check_metrics(env: Mapping[str, str]) -> CheckResult:
    raw = (env.get("ALERTFLOW_METRICS_PORT") or "").strip()
    parts = []
    if raw:
        if not raw.isdigit() or not 0 <= int(raw) < 65536:
            return CheckResult("metrics", False, f"ALERTFLOW_METRICS_PORT={raw!r} is not a port",
                               "give a port number, or unset it")
        parts.append(f"exporter on :{raw}/metrics")
    try:
        api = _truthy(env, "BYTEWAX_DATAFLOW_API_ENABLED")
    except ValueError as exc:
        return CheckResult("metrics", False, str(exc), "set BYTEWAX_DATAFLOW_API_ENABLED=true or unset it")
    if api:
        parts.append(f"bytewax API :{(env.get('BYTEWAX_DATAFLOW_API_PORT') or '3030').strip()}/metrics")
    if not parts:
        return CheckResult("metrics", True, "off (set BYTEWAX_DATAFLOW_API_ENABLED=true to serve /metrics)")
    return CheckResult("metrics", True, ", ".join(parts))


SINK_SWITCHES = ("POST_TO_SLACK", "FRITZ_TOKEN")


def check_oracle(info: FlowInfo, env: Mapping[str, str], timeout_s: float = 5.0) -> list[CheckResult]:
    """The flow's own validation (operators/preflight.py: weights, input, outputs, recovery),
    then the services it will talk to."""
    from operators.config import ConfigError, Settings
    from operators.preflight import validate

    survey = _survey(info.survey)
    out: list[CheckResult] = []
    try:
        settings = Settings.from_env(survey, env)
    except ConfigError as exc:
        detail, _, fix = str(exc).partition(" -> ")
        return [CheckResult("config", False, detail, fix or "fix that variable (python -m dataflows --help)")]
    except ValueError:
        # A Fritz or Slack setting is wrong: their own checks below say which; check the rest without them.
        settings = Settings.from_env(survey, {k: v for k, v in env.items() if k not in SINK_SWITCHES})
    out.append(CheckResult("config", True, f"survey {survey.name}, filter {settings.filter_name}, batch "
                                           f"{settings.batch_size}, {settings.shards} shards"))
    local, model = validate(settings, survey)
    out.extend(local)
    if settings.kafka is not None:
        k = settings.kafka
        out.append(check_kafka(k.brokers, k.topic, k.client_config, timeout_s, settings.redact))
    out.append(check_mongo(settings, survey, model) if settings.mongo is not None else
               CheckResult("store", True, f"bundled documents in {settings.sample_dir} "
                                          f"(set MONGODB_URI or BOOM_DATABASE__HOST for BOOM's MongoDB)"))
    if survey.fritz:
        out.append(check_fritz(env, timeout_s))
    out.append(check_slack(env, survey.slack_channel_env))
    out.append(check_metrics(env))
    return out


def check_mongo(settings, survey, model=None) -> CheckResult:
    from operators.mongo_store import acquire_client, release_client

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
        from dataclasses import replace

        from operators.fritz_client import FritzAuthError, FritzClient, FritzError
        from operators.fritz_config import FritzConfig

        cfg = FritzConfig.from_env(env)
    except ImportError:
        return CheckResult("fritz", True, "client not installed in this tree (operators/fritz_client.py)")
    except ValueError as exc:
        return CheckResult("fritz", False, str(exc), "fix the FRITZ_* variable named")
    if not cfg.enabled:
        return CheckResult("fritz", True, "off (FRITZ_TOKEN unset)")
    client = FritzClient(replace(cfg, timeout=timeout_s, max_retries=1, backoff_429=0.5))
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
    try:
        on = _truthy(env, "POST_TO_SLACK")
        try:
            from operators.slack import SlackConfig
        except ImportError:
            pass
        else:
            SlackConfig.from_env(env)  # validates: token present when enabled, a channel, the threshold
    except ValueError as exc:
        return CheckResult("slack", False, str(exc), "set the variable named, or POST_TO_SLACK=false")
    if not on:
        return CheckResult("slack", True, "off (POST_TO_SLACK not true)")
    missing = [v for v in ("SLACK_BOT_TOKEN", channel_var) if not (env.get(v) or "").strip()]
    if missing:
        return CheckResult("slack", False, f"POST_TO_SLACK=true but {' and '.join(missing)} unset",
                           f"set {' and '.join(missing)}, or POST_TO_SLACK=false")
    return CheckResult("slack", True, f"SLACK_BOT_TOKEN and {channel_var} set")


def check_fink_vra(env: Mapping[str, str], timeout_s: float = 5.0) -> list[CheckResult]:
    try:
        from operators.fink_vra import FinkVraConfig

        cfg = FinkVraConfig.from_env(env)
    except ImportError as exc:
        return [CheckResult("config", False, f"cannot import the Fink VRA flow: {_short(exc)}", "install the package")]
    except ValueError as exc:
        return [CheckResult("config", False, str(exc), "fix that variable (python -m dataflows --help)")]
    secrets = [v for k, v in cfg.kafka_config.items() if "password" in k] + ([cfg.lasair_token] if cfg.lasair_token else [])

    def redact(text: str) -> str:
        for s in secrets:
            text = text.replace(s, "***")
        return text

    from operators.preflight import validate_fink_vra

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
    from its settings (operators/recovery.py), so it is the same however the flow is started."""
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
        from operators.replay import main as replay_main

        return replay_main(rest)
    if command == "run":
        if not rest:
            print("usage: python -m dataflows run FLOW [bytewax.run options]", file=sys.stderr)
            return 2
        return run(rest[0], rest[1:])
    if command == "backfill":
        from dataflows.backfill import main as backfill

        return backfill(rest)
    if command == "compare":
        from operators.compare import main as compare

        return compare(rest)
    if command in FLOWS:
        return run(command, rest)
    print(f"unknown command or flow {command!r}\n", file=sys.stderr)
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
