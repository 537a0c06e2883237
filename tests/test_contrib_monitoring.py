"""The monitoring ocspd ships (issue 14): Prometheus alert rules and a Grafana dashboard.

``contrib/prometheus/ocspd.rules.yml`` passes ``promtool check rules`` and its unit tests
(``ocspd.rules.test.yml``: every alert fires in one case and stays quiet in another); every
PromQL expression of the rules and of ``contrib/grafana/ocspd.json`` parses (promtool, the
dashboard's as recording rules of a generated file) and names only metrics that a real ocspd
app, with a database and a ``read_dsn`` so that every family shows, exposes on /metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ocspd.app import METRICS, STORE, app_readiness
from ocspd.web.admin import init_admin_app
from tests.conftest import AppClient
from tests.crls import der, make_crl
from tests.helpers import TestPki, eventually, request_der, start_replicas

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "ocspd.rules.yml"
RULES_TESTS = ROOT / "contrib" / "prometheus" / "ocspd.rules.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "ocspd.json"

# Metrics that are not ocspd's but may be named: Prometheus's own, per scrape target.
PROMETHEUS_METRICS = frozenset({"up"})
# What Grafana puts in for its own variables before a query is sent (any duration will do here).
GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


Promtool = Callable[..., str]


@pytest.fixture
def promtool() -> Promtool:
    """Run promtool with these arguments (in ``cwd``): its output, once it succeeded. Skipped without it."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")

    def run(*args: str, cwd: Path = ROOT, context: str = "") -> str:
        done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{output}{context}"
        return output

    return run


# -- reading the expressions ----------------------------------------------------------------------


def rule_exprs(text: str) -> dict[str, str]:
    """The ``expr`` of every rule of a rules file, by alert (or record) name.

    A YAML subset, enough for ocspd.rules.yml (the venv has no YAML parser): ``expr:`` holds a
    plain scalar on its line, or a block (``>-``) of the lines indented deeper. Another form fails
    here rather than leave a rule out; promtool's rule count is compared with these too.
    """
    lines = text.splitlines()
    exprs: dict[str, str] = {}
    name = None
    for i, line in enumerate(lines):
        if found := re.fullmatch(r"\s*- (?:alert|record): (\S+)\s*", line):
            name = found[1]
            continue
        if not (found := re.fullmatch(r"(\s*)expr:(.*)", line)):
            continue
        assert name is not None and name not in exprs, f"line {i + 1}: an expr without a rule of its own"
        indent, value = len(found[1]), found[2].strip()
        if value in (">-", ">", "|-", "|"):
            block = []
            for more in lines[i + 1 :]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                block.append(more.strip())
            value = "\n".join(block).strip()
        else:
            assert value and value[0] not in "\"'&*!{[#" and " #" not in value, f"{name}: an expr form not read here"
        exprs[name] = value
    return exprs


def grafana_substitute(expr: str, variables: frozenset[str]) -> str:
    """``expr`` with Grafana's variables replaced as a query would have them (``$job``: ``.+``)."""

    def value(found: re.Match[str]) -> str:
        name = found["plain"] or found["braced"]
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        assert name in variables, f"${name} is not a variable of the dashboard: {expr}"
        return ".+"

    substituted = re.sub(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<plain>\w+))", value, expr)
    assert "$" not in substituted and "[[" not in substituted, expr
    return substituted


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from _walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child)


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression of a dashboard, Grafana's variables substituted, by where it is.

    Panel targets (rows' nested panels included: every ``expr`` anywhere) and the queries of
    query variables (``label_values(<selector>, label)``: the selector).
    """
    variables = frozenset(v["name"] for v in dashboard["templating"]["list"])
    exprs: dict[str, str] = {}
    for node in _walk(dashboard["panels"]):
        for target in node.get("targets", []):
            exprs[f"panel {node['id']} {node['title']!r} target {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        found = re.fullmatch(r"\s*(?:label_values\((.+),\s*\w+\s*\)|query_result\((.+)\))\s*", query)
        assert found, f"variable {variable['name']}: a query this test does not read: {query}"
        exprs[f"variable {variable['name']}"] = found[1] or found[2]
    assert sum(1 for node in _walk(dashboard["panels"]) if "expr" in node) == sum(
        1 for where in exprs if where.startswith("panel")
    ), "an expr outside a panel's targets"
    return {where: grafana_substitute(expr, variables) for where, expr in exprs.items()}


# PromQL words that are not metric names where they stand (function and aggregation names are
# followed by "(", and are told apart that way).
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"inf", "nan", "atan2"}
)
_TOKEN = re.compile(
    r"(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<other>\S)"
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, ranges, grouping label lists and offsets are dropped first; of
    the words left, those followed by "(" are functions or aggregations, and keywords are
    keywords. A selector without a metric name (``{__name__=...}``) fails here.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    assert "__name__" not in text and not re.search(r"(?:^|[^\w:\s])\s*\{", text), f"a selector without a name: {expr}"
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    tokens = list(_TOKEN.finditer(text))
    for i, token in enumerate(tokens):
        word = token["name"]
        if word is None or word.lower() in _KEYWORDS:
            continue
        if i + 1 < len(tokens) and tokens[i + 1].group() == "(":
            continue
        names.add(word)
    return names


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, job) (rate(ocspd_request_duration_seconds_bucket{job=~"a|b"}[5m])))'
    ) == {"ocspd_request_duration_seconds_bucket"}
    assert metric_names("sum(rate(a_total[5m] offset 1h)) by (le) > bool 1e6 or on (x) group_left (y) b:c") == {
        "a_total",
        "b:c",
    }
    assert metric_names('count(m == 0 and on (job) n{cause="x y"} > 0) or vector(0) unless up') == {"m", "n", "up"}
    assert metric_names('label_replace(x, "dst", \'$1\', "src", "(.*)") / ignoring(a) 0x1f') == {"x"}
    with pytest.raises(AssertionError, match="without a name"):
        metric_names('sum(rate({__name__="ocspd_requests_total"}[5m]))')
    with pytest.raises(AssertionError, match="without a name"):
        metric_names('rate({job="ocspd"}[5m])')


def test_grafana_variables_are_substituted() -> None:
    variables = frozenset({"job", "instance"})
    assert grafana_substitute('rate(x{job=~"$job", i=~"${instance}"}[$__rate_interval])', variables) == (
        'rate(x{job=~".+", i=~".+"}[5m])'
    )
    with pytest.raises(AssertionError, match="not a variable"):
        grafana_substitute('x{job=~"$cluster"}', variables)


def all_exprs() -> dict[str, str]:
    """Every PromQL expression shipped, by where it is."""
    exprs = {f"rule {name}": expr for name, expr in rule_exprs(RULES.read_text()).items()}
    exprs.update(
        {f"dashboard {where}": expr for where, expr in dashboard_exprs(json.loads(DASHBOARD.read_text())).items()}
    )
    return exprs


# -- promtool ------------------------------------------------------------------------------------


def the_rules_pass_promtool_check_rules(promtool: Promtool, tmp_path: Path) -> None:
    output = promtool("check", "rules", str(RULES))
    found = re.search(r"SUCCESS: (\d+) rules found", output)
    assert found, output
    assert int(found[1]) == len(rule_exprs(RULES.read_text())), "rules this test did not read"


def the_rules_pass_their_unit_tests(promtool: Promtool, tmp_path: Path) -> None:
    assert "SUCCESS" in promtool("test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = set(rule_exprs(RULES.read_text()))
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in RULES_TESTS.read_text().split("- eval_time:")[1:]:
        found = re.search(r"^\s*alertname: (\S+)\s*$", case, re.MULTILINE)
        assert found, case
        (quiet if re.search(r"exp_alerts: \[\]", case) else fires).add(found[1])
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def every_dashboard_expression_parses(promtool: Promtool, tmp_path: Path) -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    records = {f"dashboard:expr_{i}": (where, expr) for i, (where, expr) in enumerate(exprs.items())}
    rules = [{"record": record, "expr": expr} for record, (_, expr) in records.items()]
    generated = tmp_path / "dashboard.rules.yml"
    generated.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))  # JSON is YAML
    where = "\n".join(f"{record}: {where}" for record, (where, _) in records.items())
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(generated), context=f"\n{where}")


@pytest.mark.parametrize(
    "check",
    [the_rules_pass_promtool_check_rules, the_rules_pass_their_unit_tests, every_dashboard_expression_parses],
    ids=lambda check: check.__name__,
)
def test_promtool(check: Callable[[Promtool, Path], None], promtool: Promtool, tmp_path: Path) -> None:
    check(promtool, tmp_path)  # one test, so that without promtool one line says why all are skipped


# -- the names, against a real /metrics --------------------------------------------------------------


async def exposed_families(
    aiohttp_client: Any, ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> dict[str, set[str]]:
    """Sample names by family, as /metrics of an app with a database and a read_dsn exposes them."""
    # A CRL too (a file), so that the ocspd_crl_* series exist.
    crl_path = db_pki.directory / "ca.crl"
    now = dt.datetime.now(dt.UTC)
    crl_path.write_bytes(
        der(make_crl(db_pki.ca, [], number=1, this_update=now, next_update=now + dt.timedelta(days=1)))
    )
    with db_pki.config_path.open("a") as f:
        f.write(f'crl = "{crl_path}"\n')
    # read_dsn on the primary itself: in the read set, lag 0 (a server not in recovery is current).
    [client] = await start_replicas(ocspd_client, db_pki, n=1, env={"OCSPD_DATABASE_READ_DSN": pg_dsn})
    app = client.app
    await (await client.post("/", data=request_der(db_pki.leaves["good"].cert, db_pki.ca.cert))).read()
    await app[STORE].flush()  # the write-back of its signed response, before the database goes
    admin = await aiohttp_client(init_admin_app(app[METRICS].exposition, lambda: app_readiness(app)))
    text = ""

    async def scraped_with_the_read_target() -> bool:
        nonlocal text
        response = await admin.get("/metrics")
        assert response.status == 200
        text = await response.text()
        # set by the gauges loop, once a second
        return "\nocspd_read_target_in_use{" in text and "\nocspd_crl_number{" in text

    await eventually(scraped_with_the_read_target, what="the read target's gauges on /metrics")
    return {
        family.name: {sample.name for sample in family.samples} or _names_of_samples(family.name, family.type)
        for family in text_string_to_metric_families(text)
    }


def _names_of_samples(name: str, kind: str) -> set[str]:
    """The sample names of a labelled family without a series yet (its HELP and TYPE are on /metrics):
    the PKCS#11 token metrics of an app whose keys are files, say."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))
    return {name + suffix for suffix in suffixes}


async def test_the_rules_and_the_dashboard_name_only_metrics_ocspd_exposes(
    aiohttp_client: Any, ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    families = await exposed_families(aiohttp_client, ocspd_client, db_pki, pg_dsn)
    exposed = set().union(*families.values())
    used = {where: metric_names(expr) for where, expr in all_exprs().items()}
    assert all(used.values()), [where for where, names in used.items() if not names]
    unknown = {where: sorted(names - exposed - PROMETHEUS_METRICS) for where, names in used.items()}
    assert {where: names for where, names in unknown.items() if names} == {}, "not on ocspd's /metrics"
    # And the other way: the dashboard shows every family ocspd exposes (a histogram's
    # _bucket, _sum or _count, a counter's _total stand for their family), bar the _created
    # gauges prometheus-client adds to counters and histograms.
    shown = set().union(*(names for where, names in used.items() if where.startswith("dashboard")))
    created = {name for name in families if name.endswith("_created") and name.removesuffix("_created") in families}
    missing = sorted(name for name, samples in families.items() if name not in created and not samples & shown)
    assert missing == [], "not on the dashboard"
