"""The leak guard's redaction of failure reports (rdsiam.testing): what pytest shows of a long token,
cut anywhere, keeps none of the token's secret parts."""

from __future__ import annotations

import pytest

from rdsiam.testing._fixtures_operator import redact

SESSION = "IQoJb3JpZ2luX2VjEFAKE" + "Zm9vYmFyYmF6" * 50  # a long session token, as STS hands out
TOKEN = ("orders.cluster-abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-"
         "SHA256&X-Amz-Credential=ASIAFAKE%2F20260101%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20260101T000000Z"
         f"&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token={SESSION}&X-Amz-Signature=" + "5f" * 32)


@pytest.mark.parametrize("cut", [0, 200, 400, 560, 700])
def test_a_token_cut_anywhere_is_redacted(cut: int) -> None:
    # pytest shortens long strings in assertion reports: "...", then the rest, the parameter name gone
    shown = f"E   AssertionError: assert 'DBUser=app...{TOKEN[cut:]}' == 'other'"
    text = redact(shown)
    windows = {SESSION[i:i + 24] for i in range(len(SESSION) - 24)} | {("5f" * 32)[i:i + 24] for i in range(40)}
    kept = [w for w in windows if w in text]
    assert not kept, f"{len(kept)} pieces of the token kept"
    assert "AssertionError" in text and "other" in text
