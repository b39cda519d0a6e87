"""The ollama-fleet policy pack. `pulumi preview --policy-pack policies` runs this file; it only builds the pack.

The policies live in rules.py, which the offline preview (`fleet preview`) runs too.
"""

from pulumi_policy import PolicyPack

try:  # run by the Pulumi CLI from this folder
    import rules
except ImportError:  # imported as part of the installed package
    from policies import rules

PolicyPack(
    name=rules.PACK_NAME,
    policies=rules.POLICIES,
    enforcement_level=rules.PACK_ENFORCEMENT,
)
