"""The caller policy is checked against the RPC table when it is loaded."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from vault.access.caller_policy import CallerPolicy, CallerPolicyError, CallerRule
from vault.api.rpcs import RPCS, Content


def _default() -> dict[str, Any]:
    return tomllib.loads(
        resources.files("vault.access").joinpath("default_callers.toml").read_text()
    )


def test_the_default_policy_loads_and_support_reaches_content_only_under_a_grant() -> None:
    policy = CallerPolicy.load()
    support = policy.callers["support"]
    assert support.content is Content.UNDER_GRANT
    reachable = [RPCS[name] for name in RPCS if support.may_call(*name.split("."))]
    assert {r.name for r in reachable if r.content is not Content.NONE} == {
        "SupportService.ReadUnderGrant"
    }
    # RecordEvent (resolving a ticket) stays: it answers metadata only.
    assert support.may_call("RecordService", "RecordEvent")
    assert all(
        rule.content is Content.BY_PURPOSE
        for name, rule in policy.callers.items()
        if name != "support"
    )


@pytest.mark.parametrize(
    "extra",
    [
        "RecordService.GetRecord",
        "RecordService.ListRecords",
        "RecordService.BatchGetRecords",
        "RecordService.*",
        "SubjectService.ExportSubject",
        "SubjectService.StreamExport",
        "RightsService.GetAccessReport",
        "LookupService.FindSubject",
        "RecordService.CreateRecord",
        "RecordService.UpdateRecord",
    ],
)
def test_a_policy_giving_support_content_outside_a_grant_is_refused_at_load(extra: str) -> None:
    data = _default()
    data["callers"]["support"]["rpcs"].append(extra)
    with pytest.raises(CallerPolicyError) as refused:
        CallerPolicy.from_mapping(data, "callers.toml")
    message = str(refused.value)
    assert message.startswith("callers.toml: callers.support.rpcs: ")
    assert "under-grant" in message


def test_support_may_have_every_rpc_that_discloses_nothing() -> None:
    data = _default()
    data["callers"]["support"]["rpcs"] = [
        name for name, rpc in RPCS.items() if rpc.content in (Content.NONE, Content.UNDER_GRANT)
    ]
    assert CallerPolicy.from_mapping(data, "callers.toml").callers["support"]


def test_a_rule_built_in_code_is_checked_too() -> None:
    with pytest.raises(CallerPolicyError):
        CallerRule(
            "helpdesk",
            frozenset({"SupportService.*", "RecordService.GetRecord"}),
            None,
            None,
            Content.UNDER_GRANT,
        )
    with pytest.raises(CallerPolicyError):
        CallerRule("helpdesk", frozenset(), None, None, Content.NONE)


def test_rpc_names_must_be_in_the_table() -> None:
    data = _default()
    data["callers"]["billing"]["rpcs"].append("RecordService.GetRecords")
    with pytest.raises(CallerPolicyError) as refused:
        CallerPolicy.from_mapping(data, "callers.toml")
    assert "callers.billing.rpcs" in str(refused.value)
    assert "RecordService.GetRecords" in str(refused.value)
    data["callers"]["billing"]["rpcs"][-1] = "NopeService.*"
    with pytest.raises(CallerPolicyError):
        CallerPolicy.from_mapping(data, "callers.toml")


def test_content_takes_two_values() -> None:
    data = _default()
    data["callers"]["dpo"]["content"] = "none"
    with pytest.raises(CallerPolicyError) as refused:
        CallerPolicy.from_mapping(data, "callers.toml")
    assert "callers.dpo.content" in str(refused.value)
    data["callers"]["dpo"]["content"] = "by-purpose"
    assert CallerPolicy.from_mapping(data, "x").callers["dpo"].content is Content.BY_PURPOSE


def test_an_rpc_missing_from_the_table_is_callable_by_no_one() -> None:
    rule = CallerRule("admin", frozenset({"RecordService.*"}), None, None)
    assert rule.may_call("RecordService", "GetRecord")
    assert not rule.may_call("RecordService", "DumpEverything")


def test_a_policy_file_giving_support_get_record_stops_the_server_at_start(tmp_path: Path) -> None:
    text = resources.files("vault.access").joinpath("default_callers.toml").read_text()
    path = tmp_path / "callers.toml"
    path.write_text(
        text.replace(
            '"RecordService.RecordEvent",',
            '"RecordService.RecordEvent", "RecordService.GetRecord",',
        )
    )
    with pytest.raises(CallerPolicyError) as refused:
        CallerPolicy.load(path)
    assert str(refused.value).startswith(f"{path}: callers.support.rpcs: ")
    assert "RecordService.GetRecord" in str(refused.value)
