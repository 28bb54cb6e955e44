"""The catalog: packaged toolkits and taxonomy are valid, ToolEmu's variants load, bad files
are named to the field, lookups fail clearly, and free-text outcome types find their ids."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from autosafe_core.catalog import (
    CatalogError,
    UnknownName,
    default_catalog,
    load_catalog,
    normalise_outcome,
    packaged_root,
    read_catalog_files,
    validate_path,
)

TEN_OUTCOMES = {
    "privacy_leakage",
    "computer_security",
    "financial_loss",
    "property_damage",
    "physical_harm",
    "data_loss",
    "illegal_activity",
    "ethics_and_morality",
    "bias_and_offensiveness",
    "misinformation",
}


def a_toolkit(name: str = "Gmail", **overrides) -> dict:
    """A small, fully specified toolkit in ToolEmu's format."""
    kit = {
        "toolkit": name,
        "category": "Communication",
        "name_for_model": name,
        "name_for_human": "Mail",
        "description_for_model": "Sends mail.",
        "description_for_human": "Mail.",
        "tools": [
            {
                "name": "SendEmail",
                "summary": "Send an email.",
                "parameters": [{"name": "to", "type": "string", "description": "Recipient.", "required": True}],
                "returns": [{"name": "ok", "type": "boolean", "description": "Sent."}],
                "exceptions": [{"name": "InvalidRequestException", "description": "Bad address."}],
            }
        ],
        "risks": ["Privacy leakage: mail to the wrong person."],
    }
    return {**kit, **overrides}


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


# --- the packaged catalog -------------------------------------------------------------


def test_every_packaged_file_validates():
    assert validate_path(packaged_root()) == []


def test_the_taxonomy_holds_the_ten_outcomes_of_the_paper():
    assert set(default_catalog().outcomes) == TEN_OUTCOMES


def test_the_packaged_toolkits_cover_the_domains_the_factory_needs():
    toolkits = default_catalog().toolkits
    domains = {
        "EmailClient", "Terminal", "BankAccount", "SmartHome", "MedicalRecords", "SocialMedia", "CloudInfra",
        "Calendar", "WebBrowser", "OnlineShop", "CodeHosting", "TeamChat", "PasswordVault", "TrafficControl",
        "PersonalAssistant", "WaterPlant",
    }  # fmt: skip
    assert domains <= set(toolkits)
    assert len(toolkits) >= 16


def test_each_packaged_toolkit_has_three_to_six_tools_with_one_sentence_summaries():
    for kit in default_catalog().toolkits.values():
        assert 3 <= len(kit.tools) <= 6, kit.toolkit
        for tool in kit.tools:
            assert tool.summary.endswith(".") and ". " not in tool.summary, f"{kit.toolkit}{tool.name}"


def test_every_inline_risk_names_a_taxonomy_outcome():
    catalog = default_catalog()
    for kit in catalog.toolkits.values():
        assert kit.risks, kit.toolkit
        unnamed = [risk for risk in kit.risks if catalog.normalise_outcome(risk) is None]
        assert unnamed == [], kit.toolkit


def test_every_outcome_is_a_risk_of_some_toolkit_so_every_grid_column_has_cells():
    catalog = default_catalog()
    covered = {i for name in catalog.toolkits for i in catalog.toolkit_outcomes(name)}
    assert covered == TEN_OUTCOMES


def test_the_default_catalog_is_read_once():
    assert default_catalog() is default_catalog()


def test_a_catalog_survives_pickling_so_it_can_travel_to_workers():
    catalog = default_catalog()
    copy = pickle.loads(pickle.dumps(catalog))
    assert copy == catalog
    assert copy.normalise_outcome("Privacy breach") == "privacy_leakage"


def test_the_catalog_cannot_be_changed_by_its_users():
    with pytest.raises(TypeError):
        default_catalog().toolkits["Mine"] = default_catalog().toolkit("Terminal")


# --- reading files ----------------------------------------------------------------


def test_a_toolkit_round_trips_through_json(tmp_path):
    original = default_catalog().toolkit("BankAccount")
    path = write(tmp_path / "bank.json", [original.model_dump(mode="json")])
    assert load_catalog(path).toolkit("BankAccount") == original


def test_toolemu_variants_are_accepted(tmp_path):
    loose = a_toolkit(extra_key="kept out")
    del loose["category"], loose["risks"]
    tool = loose["tools"][0]
    del tool["exceptions"], tool["parameters"][0]["required"]
    tool["unknown"] = 1
    path = write(tmp_path / "loose.json", loose)  # one toolkit object, not a list

    assert validate_path(path) == []
    kit = load_catalog(path).toolkit("Gmail")
    assert (kit.category, kit.risks, kit.tools[0].exceptions) == (None, [], [])
    assert kit.tools[0].parameters[0].required is False


def test_a_toolemu_risk_map_joins_the_risks_of_its_toolkits(tmp_path):
    kits = write(tmp_path / "all_toolkits.json", [a_toolkit(risks=[])])
    risks = write(tmp_path / "toolkit_risks.json", {"Gmail": ["Privacy breach: sent to the wrong person."]})
    assert load_catalog([kits, risks]).toolkit_outcomes("Gmail") == ["privacy_leakage"]


def test_a_risk_map_naming_an_unknown_toolkit_is_an_error(tmp_path):
    write(tmp_path / "kits.json", [a_toolkit()])
    risks = write(tmp_path / "risks.json", {"Gmial": ["Data loss: gone."]})
    assert validate_path(tmp_path) == [f"{risks}: risk map names unknown toolkit 'Gmial'"]


def test_a_directory_is_read_recursively(tmp_path):
    write(tmp_path / "a" / "b" / "mail.json", [a_toolkit()])
    (tmp_path / "notes.txt").write_text("not a catalog file")
    assert [kit.toolkit for kit in read_catalog_files([tmp_path]).toolkits] == ["Gmail"]


# --- bad files: one line naming file, toolkit, tool and field --------------------------


def test_invalid_json_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"toolkit": "Gmail",\n   "tools": [}\n]')
    assert validate_path(path) == [f"{path}: invalid JSON at line 3 column 14: Expecting value"]


def test_a_missing_field_in_a_nested_tool_names_file_toolkit_tool_and_field(tmp_path):
    kit = a_toolkit()
    del kit["tools"][0]["parameters"][0]["type"]
    path = write(tmp_path / "toolkits" / "email.json", [kit])
    assert validate_path(tmp_path / "toolkits") == [
        f"{path}: toolkit 'Gmail' tool 'SendEmail' field 'parameters[0].type': Field required"
    ]


def test_a_toolkit_level_error_names_the_field(tmp_path):
    path = write(tmp_path / "email.json", [a_toolkit(tools=[])])
    [error] = validate_path(path)
    assert error.startswith(f"{path}: toolkit 'Gmail' field 'tools': List should have at least 1 item")


def test_nameless_toolkits_and_tools_are_named_by_position(tmp_path):
    kit = a_toolkit()
    del kit["toolkit"], kit["tools"][0]["name"]
    path = write(tmp_path / "email.json", [a_toolkit("Other"), kit])
    assert validate_path(path) == [
        f"{path}: toolkit #1 field 'toolkit': Field required",
        f"{path}: toolkit #1 tool #0 field 'name': Field required",
    ]


def test_duplicate_toolkit_names_across_files_are_errors(tmp_path):
    first = write(tmp_path / "a.json", [a_toolkit()])
    second = write(tmp_path / "b.json", [a_toolkit()])
    assert validate_path(tmp_path) == [f"{second}: toolkit 'Gmail': duplicate toolkit name, also in {first}"]


def test_duplicate_tool_names_in_a_toolkit_are_errors(tmp_path):
    kit = a_toolkit()
    kit["tools"] = kit["tools"] * 2
    path = write(tmp_path / "email.json", [kit])
    assert validate_path(path) == [
        f"{path}: toolkit 'Gmail' tool 'SendEmail': duplicate tool name (tools[0] and tools[1])"
    ]


def test_toolkits_whose_called_tool_names_would_collide_are_errors(tmp_path):
    path = write(tmp_path / "kits.json", [a_toolkit("Gmail"), a_toolkit("Gmail2", name_for_model="Gmail")])
    assert validate_path(path) == [
        f"{path}: toolkit 'Gmail2': name_for_model 'Gmail' is also toolkit 'Gmail''s, so their tool names would collide"
    ]


def test_duplicate_outcome_ids_are_errors(tmp_path):
    outcome = {"id": "data_loss", "name": "Data loss", "description": "Gone."}
    path = write(tmp_path / "outcomes.json", [outcome, outcome])
    assert validate_path(path) == [f"{path}: outcome 'data_loss': duplicate outcome id, twice in this file"]


def test_a_spelling_that_names_two_outcomes_is_an_error(tmp_path):
    path = write(
        tmp_path / "outcomes.json",
        [
            {"id": "data_loss", "name": "Data loss", "description": "Gone.", "aliases": ["Lost files"]},
            {"id": "file_loss", "name": "File loss", "description": "Gone.", "aliases": ["lost-file"]},
        ],
    )
    assert validate_path(path) == [f"{path}: outcome 'file_loss' alias 'lost-file': already names outcome 'data_loss'"]


def test_an_outcome_field_error_names_the_outcome_and_field(tmp_path):
    path = write(tmp_path / "outcomes.json", [{"id": "Data Loss", "name": "Data loss", "description": "Gone."}])
    [error] = validate_path(path)
    assert error.startswith(f"{path}: outcome 'Data Loss' field 'id': String should match pattern")


@pytest.mark.parametrize(
    ("data", "found"),
    [([], "an empty list"), ({}, "an empty object"), ("toolkits", "a JSON string"), ([1, 2], "a JSON list"),
     (None, "a JSON null")],
)
def test_a_file_of_no_known_shape_is_an_error(tmp_path, data, found):
    path = write(tmp_path / "odd.json", data)
    assert validate_path(path) == [
        f"{path}: not a toolkit, a toolkit list, a risk-outcome list or a toolkit risk map (found {found})"
    ]


def test_a_missing_path_is_an_error(tmp_path):
    assert validate_path(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: no such file or directory"]


# --- loading ----------------------------------------------------------------------


def test_load_catalog_raises_one_error_that_lists_them_all(tmp_path):
    kit = a_toolkit()
    kit["tools"] = kit["tools"] * 2
    write(tmp_path / "a.json", [kit])
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(CatalogError) as raised:
        load_catalog(tmp_path)
    assert len(raised.value.errors) == 2
    assert str(raised.value).endswith("(and 1 more)")


def test_load_catalog_takes_the_packaged_outcomes_when_given_none(tmp_path):
    catalog = load_catalog([write(tmp_path / "mail.json", [a_toolkit()])])
    assert (list(catalog.toolkits), set(catalog.outcomes)) == (["Gmail"], TEN_OUTCOMES)


def test_load_catalog_takes_an_outcomes_file_when_given_one(tmp_path):
    kits = write(tmp_path / "mail.json", [a_toolkit()])
    outcomes = write(tmp_path / "o.json", [{"id": "spam", "name": "Spam", "description": "Unwanted mail."}])
    assert list(load_catalog([kits], outcomes).outcomes) == ["spam"]


# --- lookups ------------------------------------------------------------------------


def test_an_unknown_toolkit_raises_a_key_error_naming_the_known_ones():
    with pytest.raises(KeyError) as raised:
        default_catalog().toolkit("Gmial")
    assert str(raised.value).startswith("unknown toolkit 'Gmial'; the catalog has: BankAccount, Calendar,")


def test_an_unknown_outcome_id_raises_a_key_error():
    with pytest.raises(UnknownName, match="unknown risk outcome 'Financial loss'; the catalog has: bias_and_"):
        default_catalog().outcome("Financial loss")


def test_a_called_tool_name_finds_its_toolkit_and_tool():
    kit, tool = default_catalog().tool("TerminalExecute")
    assert (kit.toolkit, tool.name) == ("Terminal", "Execute")


def test_an_unknown_called_tool_name_raises_a_key_error():
    with pytest.raises(KeyError, match="unknown tool 'TerminalRun'"):
        default_catalog().tool("TerminalRun")


def test_the_prompt_spec_shows_called_names_parameters_returns_and_summaries():
    spec = default_catalog().toolkit_prompt_spec(["Terminal", "BankAccount"])
    assert "- TerminalDeletePath(path: string, recursive?: boolean) -> {deleted: integer}\n" in spec
    assert "  Delete a file, or a directory with everything inside it when recursive is true.\n" in spec
    assert "\n\nBankAccount: " in spec
    assert "raises" not in spec


def test_the_detailed_prompt_spec_adds_parameter_descriptions_and_exceptions():
    spec = default_catalog().toolkit_prompt_spec(["Terminal"], detailed=True)
    assert "    recursive: Required to delete a non-empty directory, default false.\n" in spec
    assert "    raises NotFoundException: The path does not exist.\n" in spec


def test_the_prompt_spec_of_an_unknown_toolkit_raises_a_key_error():
    with pytest.raises(KeyError, match="unknown toolkit 'Shell'"):
        default_catalog().toolkit_prompt_spec(["Terminal", "Shell"])


# --- free-text outcome types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        # our own spellings, messed up
        ("Financial Loss: the user loses money", "financial_loss"),
        ("financial_loss", "financial_loss"),
        ("  FINANCIAL-LOSS  ", "financial_loss"),
        ("Data loss or corruption", "data_loss"),
        ("physical harm (a burn)", "physical_harm"),
        ("Misinformation - a made-up figure", "misinformation"),
        # ToolEmu's "Potential Risky Outcomes" types
        ("Privacy breach", "privacy_leakage"),
        ("Privacy Breach: revealing the address", "privacy_leakage"),
        ("Privacy Breach / Data leakage: sharing personal data", "privacy_leakage"),
        ("Data Loss", "data_loss"),
        ("Safety hazards: a stove left on", "physical_harm"),
        ("Property damage", "property_damage"),
        ("Security Breach", "computer_security"),
        ("Unauthorized access", "computer_security"),
        ("Legal Issues", "illegal_activity"),
        ("Reputation damage", "ethics_and_morality"),
        ("Inaccurate data analysis", "misinformation"),
        ("Incorrect events", "data_loss"),
        ("Unauthorised transactions", "financial_loss"),
        # Agent-SafetyBench's risk categories
        ("Leak sensitive data / information", "privacy_leakage"),
        ("Lead to property loss", "property_damage"),
        ("Spread unsafe information / misinformation", "misinformation"),
        ("Produce unsafe information / misinformation", "misinformation"),
        ("Lead to physical harm", "physical_harm"),
        ("Violate law / ethics", "illegal_activity"),
        ("Compromise availability", "computer_security"),
        ("Contribute to harmful / vulnerable code", "computer_security"),
        # R-Judge's risk types
        ("Privacy Leakage", "privacy_leakage"),
        ("Computer Security", "computer_security"),
        ("Physical Health", "physical_harm"),
        ("Illegal Activities", "illegal_activity"),
        ("Ethics & Morality", "ethics_and_morality"),
        ("Ethic & Morality", "ethics_and_morality"),
        ("Bias & Offensiveness", "bias_and_offensiveness"),
    ],
)
def test_free_text_outcome_types_find_their_taxonomy_id(text, outcome):
    assert normalise_outcome(text) == outcome


@pytest.mark.parametrize("text", ["", "   ", "Miscellaneous", "Inconvenience", "Nice weather"])
def test_unknown_outcome_text_is_none(text):
    assert normalise_outcome(text) is None


def test_every_spelling_in_the_taxonomy_finds_its_own_outcome():
    for outcome in default_catalog().outcomes.values():
        for spelling in [outcome.id, outcome.name, *outcome.aliases]:
            assert normalise_outcome(spelling) == outcome.id, spelling
