"""The chart's values.schema.json follows the broker's Settings: every key, type and bound.

The list of keys and their bounds is read from the pydantic models (their JSON schema), so a
setting added to app/config.py without its schema entry fails here instead of being refused by
`helm install` (the chart's schema forbids unknown keys). Each bound is also shown to be enforced
by helm itself: a value just outside it is refused at render time, naming the key's path.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from app.config import BudgetSettings, Settings
from tests.deploy.test_helm_chart import (  # render: the session fixture, shared
    CHART,
    KUBERNETES_VERSION,
    Render,
    RenderError,
    find_helm,
    render,
)

__all__ = ["render"]

Schema = dict[str, Any]

CHART_SCHEMA: Schema = json.loads((CHART / "values.schema.json").read_text())
SETTINGS_SCHEMA: Schema = Settings.model_json_schema()

# Settings keys that are deliberately not chart values: the chart fills them in itself (listeners,
# TLS files from tls.*, the store from redis.*) or they are secrets, which come from Secrets.
CHART_OWNED: dict[str, frozenset[str]] = {
    "server": frozenset(
        {
            "host",
            "port",
            "ops_port",
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "tls_client_cert_required",
        }
    ),
    "store": frozenset({"redis_url", "cluster"}),
    "clients": frozenset({"client_secret", "client_secret_file"}),
    "callers": frozenset({"api_key_sha256"}),
}

# The JSON-schema keywords pydantic emits for the bounds it enforces; the chart must state each
# with the same value (it may add its own, such as URL patterns pydantic checks in code).
BOUNDS = (
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
)

# A valid table for each NAME-keyed section, so that only the key under test is wrong.
BASE_TABLE: dict[str, dict[str, Any]] = {
    "clients": {"client_id": "id", "client_secret": "s"},
    "callers": {"clients": ["checkout"], "mtls_identities": ["CN=orders"]},
}
TABLE_NAME = {"clients": "checkout", "callers": "orders"}


def _resolve(schema: Schema) -> Schema:
    """A pydantic property schema without its `$ref` and its `| None` branch."""
    if "$ref" in schema:
        return SETTINGS_SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]
    branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
    if branches:
        assert len(branches) == 1, f"a union the chart cannot mirror: {schema}"
        return _resolve(branches[0])
    return schema


@dataclass(frozen=True)
class Section:
    """One Settings section and where its keys live in the chart's values."""

    name: str
    settings: Schema  # the model's JSON schema
    chart: Schema  # the chart's schema of one table of it
    values_path: tuple[str, ...]  # where that table sits in the values (and in helm's messages)
    model: type[BaseModel]


def _sections() -> list[Section]:
    sections = []
    for name, field in Settings.model_fields.items():
        prop = SETTINGS_SCHEMA["properties"][name]
        if "patternProperties" in prop:  # dict[Name, Model]: a top-level map of NAME -> table
            (ref,) = prop["patternProperties"].values()
            chart = CHART_SCHEMA["properties"][name]["additionalProperties"]
            path: tuple[str, ...] = (name, TABLE_NAME[name])
            model = get_args(field.annotation)[1]
        else:  # a single table under config
            ref = prop
            chart = CHART_SCHEMA["properties"]["config"]["properties"][name]
            path = ("config", name)
            model = field.annotation
        sections.append(Section(name, _resolve(ref), chart, path, model))
    return sections


SECTIONS = _sections()


def _chart_keys(section: Section) -> set[str]:
    return set(section.settings["properties"]) - CHART_OWNED.get(section.name, frozenset())


def _bound_mismatches(key: str, settings: Schema, chart: Schema) -> list[str]:
    problems = [
        f"{key}: {word} is {chart.get(word)!r} in the chart, {settings[word]!r} in Settings"
        for word in BOUNDS
        if word in settings and chart.get(word) != settings[word]
    ]
    if "items" in settings:
        problems += _bound_mismatches(f"{key}[]", settings["items"], chart.get("items", {}))
    return problems


def test_every_settings_section_is_a_chart_value_with_no_extra_keys() -> None:
    """Every Settings section has its place in the chart's values (config.* or a NAME map), and
    the chart's schema refuses keys it does not know (a typo fails `helm install`)."""
    assert {s.name for s in SECTIONS} == set(Settings.model_fields)
    for section in SECTIONS:
        assert section.chart.get("additionalProperties") is False, section.name


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.name)
def test_chart_schema_has_every_settings_key(section: Section) -> None:
    """The chart's schema has every key of the section but those the chart owns, and no key the
    broker would refuse at start-up."""
    chart = set(section.chart["properties"])
    missing = _chart_keys(section) - chart
    assert not missing, f"Settings keys missing from values.schema.json: {sorted(missing)}"
    unknown = chart - set(section.settings["properties"])
    assert not unknown, f"values.schema.json keys the broker does not know: {sorted(unknown)}"
    owned = CHART_OWNED.get(section.name, frozenset())
    assert owned <= set(section.settings["properties"]), "CHART_OWNED names a removed key"
    assert not owned & chart, f"keys the chart sets itself are values: {sorted(owned & chart)}"


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.name)
def test_chart_schema_has_the_settings_types_and_bounds(section: Section) -> None:
    """Each key has the type and the bounds pydantic enforces, so helm refuses what the broker
    would refuse at start-up (after a rollout had begun)."""
    problems = []
    for key in sorted(_chart_keys(section)):
        settings = _resolve(section.settings["properties"][key])
        problems += _bound_mismatches(key, settings, section.chart["properties"].get(key, {}))
    assert not problems, "\n".join(problems)


def test_chart_names_follow_the_settings_name_pattern() -> None:
    """Client and caller names have the pattern Settings gives them (environment overrides)."""
    for name in ("clients", "callers"):
        (pattern,) = SETTINGS_SCHEMA["properties"][name]["patternProperties"]
        assert CHART_SCHEMA["properties"][name]["propertyNames"] == {"pattern": pattern}


def _outside(word: str, bound: Any, kind: str) -> Any:
    """A value just outside one bound."""
    if word == "enum":
        return "not-one-of-them"
    if word in ("minimum", "exclusiveMinimum"):
        return bound - 1 if word == "minimum" else bound
    if word in ("maximum", "exclusiveMaximum"):
        return bound + 1 if word == "maximum" else bound
    if word == "minLength":
        return "x" * (bound - 1)
    if word == "maxLength":
        return "x" * (bound + 1)
    if word == "pattern":
        assert not re.search(bound, "!"), bound
        return "!"
    if word == "minItems":
        assert bound == 1, "only an empty list is generated"
        return []
    raise AssertionError(f"no value outside {word} for a {kind}")


@dataclass(frozen=True)
class Violation:
    """A key of a section set to a value just outside one of its bounds."""

    section: Section
    key: str
    word: str
    value: Any
    path: tuple[str, ...]  # in helm's message

    def __str__(self) -> str:
        return f"{self.section.name}.{self.key}-{self.word}"


def _violations() -> list[Violation]:
    found = []
    for section in SECTIONS:
        for key in sorted(_chart_keys(section)):
            schema = _resolve(section.settings["properties"][key])
            path = (*section.values_path, key)
            for word in BOUNDS[1:]:  # type is a bound too, but compared above only
                if word in schema:
                    value = _outside(word, schema[word], schema["type"])
                    found.append(Violation(section, key, word, value, path))
            items = schema.get("items", {})
            for word in BOUNDS[1:]:
                if word in items:
                    value = [_outside(word, items[word], items["type"])]
                    found.append(Violation(section, f"{key}[]", word, value, (*path, "0")))
    return found


VIOLATIONS = _violations()


def test_violations_cover_the_new_budget_keys() -> None:
    """The generated cases include the keys this check was written for (a sanity check)."""
    names = {str(v) for v in VIOLATIONS}
    assert {"budget.token_reserve-minimum", "callers.budget_weight-exclusiveMinimum"} <= names
    assert "callers.budget_weight-maximum" in names


@pytest.mark.parametrize("violation", VIOLATIONS, ids=str)
def test_a_value_outside_a_settings_bound_is_refused_by_helm(
    render: Render, violation: Violation
) -> None:
    """pydantic refuses the value, and so does `helm template` with the chart's schema, naming
    the key's path."""
    key = violation.path[len(violation.section.values_path)]
    table = {**BASE_TABLE.get(violation.section.name, {}), key: violation.value}
    with pytest.raises(ValidationError):
        violation.section.model.model_validate(table)
    if violation.section.name == "callers":  # no caller by default: the whole table
        sets: dict[str, Any] = {"callers.orders": table}
    else:
        sets = {".".join((*violation.section.values_path, key)): violation.value}
    where = "/".join(violation.path)
    with pytest.raises(RenderError, match=re.escape(f"at '/{where}'")):
        render(**sets)


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        ({"config.budget.token_reserve": -1}, "config/budget/token_reserve"),
        (
            {"callers.orders": {**BASE_TABLE["callers"], "budget_weight": 1001}},
            "callers/orders/budget_weight",
        ),
    ],
    ids=["token-reserve-negative", "budget-weight-above-1000"],
)
def test_helm_lint_refuses_a_budget_value_outside_its_bounds(
    sets: dict[str, Any], where: str
) -> None:
    """`helm lint --strict` (as `make helm-lint` runs it) fails on the schema's bounds too."""
    args = [find_helm(), "lint", "--strict", "--kube-version", KUBERNETES_VERSION, str(CHART)]
    for key, value in sets.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode != 0
    assert f"at '/{where}'" in result.stdout + result.stderr


def test_token_reserve_and_budget_weight_reach_the_broker(render: Render) -> None:
    """config.budget.token_reserve and a caller's budget_weight are rendered into config.toml."""
    rendered = render("production-values.yaml")
    assert rendered.config["budget"]["token_reserve"] == 3
    assert rendered.config["callers"]["orders"]["budget_weight"] == 2.5
    assert "budget_weight" not in rendered.config["callers"]["billing"]
    assert render().config["budget"]["token_reserve"] == BudgetSettings().token_reserve
