"""`rdsiam --help` and each command's help read by a new user, and `rdsiam token`'s one-line credential errors."""

from __future__ import annotations

import argparse
import re

import botocore.credentials
import pytest
from botocore.exceptions import ClientError, NoCredentialsError, ProfileNotFound

from rdsiam import cli
from rdsiam.operator.target import DEFAULT_PORTS

COMMANDS = ["run", "token", "check", "crd"]
# botocore's default chain, in order (botocore.credentials.create_credential_resolver, botocore 1.44).
BOTOCORE_CHAIN = ["env", "assume-role", "assume-role-with-web-identity", "sso", "shared-credentials-file", "login",
                  "custom-process", "config-file", "ec2-credentials-file", "boto-config", "container-role", "iam-role"]


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    out: str = capsys.readouterr().out
    return out


def option_help(text: str, option: str) -> str:
    """The help of one option, whitespace collapsed: its line up to the next option or section."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+(-\w \S+, )?{re.escape(option)}\b", line))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 6) or line.lstrip().startswith("-"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def description_of(text: str) -> str:
    """The paragraph between the usage lines and the first argument section."""
    body = text.split("\n\n", 1)[1]
    return body.split("options:")[0].split("positional arguments:")[0].strip()


@pytest.fixture(autouse=True)
def _columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def test_top_level_help_describes_the_project_and_lists_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    assert "RDS IAM" in description_of(text)
    for command in COMMANDS:
        assert re.search(rf"^ {{4}}{command} +\w.{{10,}}", text, re.M), f"{command} has no description in:\n{text}"
    assert "rdsiam COMMAND --help" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_description(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, command)
    assert text.startswith(f"usage: rdsiam {command}")
    assert len(description_of(text)) > 40, text


def test_run_says_it_is_what_the_chart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert "Helm chart" in description_of(help_of(capsys, "run"))


@pytest.mark.parametrize(("command", "option", "shown"), [
    ("run", "--concurrency", "(default: 16)"),
    ("run", "--verify-timeout", "(default: 5.0)"),
    ("run", "--liveness", "(default: http://0.0.0.0:8080/healthz)"),
    ("run", "--lease-name", "(default: rdsiam-operator)"),
    ("run", "--log-level", "(default: info)"),
    ("run", "--log-format", "(default: text)"),
    ("run", "--namespace", "(default: all namespaces)"),
    ("run", "--metrics-port", "(default: no metrics)"),
    ("token", "--port", f"(default: {DEFAULT_PORTS['postgres']} for postgres, {DEFAULT_PORTS['mysql']} for mysql)"),
    ("token", "--engine", "(default: postgres)"),
    ("token", "--region", "(default: inferred from an RDS hostname)"),
    ("check", "--timeout", "(default: 10)"),
])
def test_named_defaults_are_shown(command: str, option: str, shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert shown in option_help(help_of(capsys, command), option)


def test_every_option_with_a_default_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for command, parser in subparsers.choices.items():
        if command == "check":  # parsed by rdsiam._check, covered above
            continue
        text = help_of(capsys, command)
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            assert f"default: {action.default}" in option_help(text, action.option_strings[-1]), action.dest
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_has_no_rest_markup_and_no_default_noise(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, *command)
    assert "``" not in text
    assert not re.search(r":\w+:`", text), text
    assert "default: None" not in text and "default: False" not in text


def test_credential_sources_name_botocores_chain_as_users_know_it() -> None:
    assert cli.credential_sources(BOTOCORE_CHAIN, profile="default", imds_disabled=True) == (
        "environment variables, shared credentials/config files (profile default), "
        "web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), container credentials (EKS Pod Identity / ECS), "
        "EC2 instance metadata (off: AWS_EC2_METADATA_DISABLED)")
    # A provider botocore adds later is still named, by its method.
    assert cli.credential_sources(["env", "new-thing"], profile="p").endswith(", new-thing")


def test_every_botocore_provider_has_a_name() -> None:
    methods = {c.METHOD for c in vars(botocore.credentials).values()
               if isinstance(c, type) and issubclass(c, botocore.credentials.CredentialProvider) and c.METHOD}
    assert methods <= set(cli.CREDENTIAL_SOURCES), methods - set(cli.CREDENTIAL_SOURCES)
    assert set(BOTOCORE_CHAIN) == set(cli.CREDENTIAL_SOURCES)


class FakeSession:
    def __init__(self, *methods: str) -> None:
        self.providers = [type("P", (), {"METHOD": m})() for m in methods]

    def get_component(self, name: str) -> FakeSession:
        assert name == "credential_provider"
        return self

    def get_config_variable(self, name: str) -> str | None:
        return {"config_file": "~/.aws/config", "credentials_file": "~/.aws/credentials"}.get(name)


def test_no_credentials_names_what_was_tried_and_what_to_do() -> None:
    line = cli.credentials_problem(NoCredentialsError(), FakeSession(*BOTOCORE_CHAIN), {})
    assert line is not None and "\n" not in line
    assert line.startswith("no AWS credentials found (tried: environment variables, ")
    assert "web identity" in line and "EKS Pod Identity" in line and "EC2 instance metadata)" in line
    assert "set AWS_PROFILE" in line


def test_a_missing_profile_names_it_its_variable_and_the_files() -> None:
    line = cli.credentials_problem(ProfileNotFound(profile="prod"), FakeSession(), {"AWS_PROFILE": "prod"})
    assert line == ("AWS profile 'prod' (from AWS_PROFILE) is not in ~/.aws/config or ~/.aws/credentials; name a "
                    "profile defined there ('aws configure list-profiles') or unset AWS_PROFILE")


def test_sts_refusing_web_identity_quotes_aws() -> None:
    exc = ClientError({"Error": {"Code": "InvalidIdentityToken", "Message": "Incorrect token\naudience"}},
                      "AssumeRoleWithWebIdentity")
    line = cli.credentials_problem(exc, FakeSession(), {})
    assert line is not None and line.startswith(
        "AWS refused to issue credentials (AssumeRoleWithWebIdentity: InvalidIdentityToken): Incorrect token audience;")


def test_an_unreadable_irsa_token_file_is_named() -> None:
    exc = FileNotFoundError(2, "No such file or directory", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token")
    line = cli.credentials_problem(exc, FakeSession(), {"AWS_WEB_IDENTITY_TOKEN_FILE": exc.filename})
    assert line is not None and line.startswith(
        "cannot get AWS credentials: cannot read /var/run/secrets/eks.amazonaws.com/serviceaccount/token "
        "(AWS_WEB_IDENTITY_TOKEN_FILE, the IRSA token): No such file or directory; ")


def test_other_errors_are_not_taken_for_credential_problems() -> None:
    assert cli.credentials_problem(ValueError("x"), FakeSession(), {}) is None
