"""`python -m bench.embedder_profile`: the service's passes, the operators and the GEMMs, with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import embedder_profile
from stack.tiny_model import TinyModel


def test_the_profile_accounts_for_every_image_and_times_both_batch_sizes(tiny_model: TinyModel, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    embedder_profile.main(
        [
            "--model", tiny_model.name,
            "--set", f"architecture_config={tiny_model.config}",
            "--set", f"checkpoint={tiny_model.checkpoint}",
            "--clients", "3", "--requests-per-client", "2", "--singles", "2",
            "--repeats", "1", "--pause", "0", "--gemm-seconds", "0.05",
            "--out", str(out),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    service = report["service"]
    # Every image the clients sent ran in a pass the service logged, in that phase and no other.
    assert sum(service["one_at_a_time"]["passes"]) == service["one_at_a_time"]["images"] == 2
    assert service["one_at_a_time"]["passes"] == [1, 1]
    assert sum(service["concurrent"]["passes"]) == service["concurrent"]["images"] == 6
    assert max(service["concurrent"]["passes"]) <= 3  # the clients' count is the batch limit
    for phase in ("one_at_a_time", "concurrent"):
        assert 0 < service[phase]["share_in_passes"] <= 1
        assert len(service[phase]["running_ms"]) == len(service[phase]["passes"])
        assert len(service[phase]["waits_between_passes_ms"]) == len(service[phase]["passes"]) - 1
    assert service["rss_mb_after"] > 0
    operators = report["operators"]
    assert set(operators) == {"batch_1", "batch_3", "batch_gain"}
    assert all(0 < share <= 1 for share in operators["batch_3"]["operator_shares"].values())
    gemm = report["gemm"]
    rows = gemm["tokens"]
    assert len(gemm[f"gflop_per_s_m{rows}"]) == len(gemm[f"gflop_per_s_m{3 * rows}"]) == 2
    assert gemm["batch_gain"] > 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--singles", "0"], "--singles: 0: at least 1"),
        (["--clients", "-1"], "--clients: -1: at least 1"),
        (["--set", "bogus"], "--set bogus: expected name=value"),
        (["--set", "nosuch=1"], "--set nosuch=1: expected name=value"),
        (["--set", "max_batch_wait_ms=-5"], "the embedder settings are invalid: max_batch_wait_ms"),
    ],
)
def test_arguments_that_cannot_work_are_refused_before_anything_runs(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        embedder_profile.main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
