"""The offline preview: the real Pulumi program run under Pulumi's mocks, judged by the policy pack.

This package is the application layer that assembles the others (the core, components/, policies/): offline
runs the program and prints the plan, mock_cloud answers for the cloud, policy_runner hands the recorded
resources to the pack's own policy objects, sdk_overrides trims the SDK's per-resource work for the mocked run.
"""
