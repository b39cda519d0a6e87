"""The stack name decides the environment (fleet/stack_names.py): words cut at every non-letter, environment
words glued to qualifiers read, `pre`/`non` before a prod word, the strictest environment named wins; and every
consumer (config load, the policies, the preview's and CI's policy config) applies that one rule."""

from __future__ import annotations

import re

import pytest
import yaml
from policy_builders import ROOT, program_resources, restack

from fleet import policy_config
from fleet.preview.policy_runner import evaluate
from fleet.stack_file import StackConfigError, load_stack_file
from fleet.stack_names import ENVIRONMENT_WORDS, QUALIFIERS, environment_of_stack, words_of

NAMES = {
    # glued to a region or place, before or after, with digits anywhere
    "prodeu": "prod", "euprod": "prod", "prod2": "prod", "2prod": "prod", "prod01eu": "prod",
    "produseast1": "prod", "useast1prod": "prod", "eu-west-1-prod": "prod", "EuProd": "prod", "PRODEU": "prod",
    "prdeu": "prod", "eu.production": "prod", "production_apac": "prod", "prodblue": "prod", "drprod": "prod",
    "stgeu": "staging", "eustaging": "staging", "stage3": "staging", "staging-ap-south-1": "staging",
    "deveu": "dev", "usdev": "dev", "dev42": "dev", "alice-development": "dev", "developus": "dev",
    # the stage before prod
    "preprod": "staging", "pre-prod": "staging", "pre_prod": "staging", "PreProd": "staging",
    "preproduction": "staging", "eupreprod": "staging", "preprod2": "staging", "pre.prd": "staging",
    # not prod, and no other environment
    "nonprod": None, "non-prod": None, "nonproduction": None, "nonprod-dev": "dev", "nonprod-stg": "staging",
    # several environments: the strictest
    "dev-prod-mirror": "prod", "preprod-prod": "prod", "devprod": "prod", "stgdev": "staging", "prod-preprod": "prod",
    # other words that merely contain an environment word decide nothing
    "sandbox": None, "product": None, "devops": None, "backstage": None, "reproduce": None, "prodigy": None,
    "stagecoach": None, "developer": None, "pre": None, "non": None, "eu": None, "": None, "pre-product": None,
}


@pytest.mark.parametrize("stack", sorted(NAMES))
def test_the_stack_name_decides_the_environment(stack):
    assert environment_of_stack(stack) == NAMES[stack]


def test_words_are_cut_at_non_letters_and_read_as_glued_words():
    assert words_of("eu-preprod2") == ["eu", "pre", "prod"]
    assert words_of("Team_PRODeu.1") == ["team", "prod", "eu"]
    assert words_of("product") == ["product"]


@pytest.mark.parametrize("stack, decided", [("prodeu", "prod"), ("euprod", "prod"), ("preprod", "staging")])
def test_a_glued_stack_name_declaring_a_laxer_environment_is_refused_at_load(tmp_path, stack, decided):
    document = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    document["config"]["ollama-fleet:fleet"]["environment"] = "dev"
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(StackConfigError) as caught:
        load_stack_file(path)
    assert f"Pulumi.{stack}.yaml" in str(caught.value) and f"allowed: {decided}" in str(caught.value)


def test_a_glued_prod_stack_running_dev_containers_gets_prods_rules():
    resources = restack(program_resources("dev"), "euprod")
    report = evaluate(resources, "euprod")
    found = report.by_policy("environment-of-stack")
    assert found and found[0].message.startswith("Pulumi.euprod.yaml: ollama-fleet:fleet.environment: ")
    assert all(v.enforcement == "mandatory" for v in found)  # judged with config.prod.json, not dev's advisory one
    assert any("trusted certificate" in v.message for v in report.by_policy("tls-in-prod"))


@pytest.mark.parametrize("stack, config", [("prodeu", "prod"), ("preprod", "staging"), ("stgap", "staging"), ("usdev", "dev")])
def test_a_glued_stack_name_takes_its_environments_policy_config(stack, config):
    assert policy_config.config_path(stack).name == f"config.{config}.json"
    assert policy_config.config_path("nonprod") is None


def test_the_runbook_states_exactly_the_words_the_rule_reads():
    """docs/runbook.md spells the rule out: its environment words (with their environment) and its qualifiers are
    exactly those of fleet/stack_names.py, each listed once."""
    runbook = " ".join((ROOT / "docs" / "runbook.md").read_text().split())
    start = runbook.index("2. A word is read when")
    rule = runbook[start : runbook.index(" So `", start)]
    environments, qualifiers = rule.split("Qualifiers, which decide nothing:")
    stated = {}
    for listed, environment in re.findall(r"((?:`[a-z]+`,? )+)\((dev|staging|prod)\)", environments):
        for word in re.findall(r"`([a-z]+)`", listed):
            assert word not in stated, f"docs/runbook.md lists the environment word {word!r} twice"
            stated[word] = environment
    assert stated == ENVIRONMENT_WORDS
    words = [word for span in re.findall(r"`([a-z ]+)`", qualifiers) for word in span.split()]
    assert len(words) == len(set(words)), f"docs/runbook.md repeats a qualifier: {sorted(words)}"
    assert set(words) == QUALIFIERS, (
        f"docs/runbook.md lacks {sorted(QUALIFIERS - set(words))} and lists {sorted(set(words) - QUALIFIERS)} beyond "
        "fleet/stack_names.py's QUALIFIERS"
    )
