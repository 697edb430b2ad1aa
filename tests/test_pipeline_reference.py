"""Reference mode on real EMT MD: fit on a trusted run, save, load, judge other runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from trajwatch.frame import Frame
from trajwatch.pipeline import (
    Pipeline,
    PipelineConfig,
    fit_reference,
    load_reference,
    run,
    save_reference,
)
from trajwatch.simulate import MDSpec, run_md


@pytest.fixture(scope="module")
def hot_frames() -> list[Frame]:
    """Same metal and thermostat as the trusted run, but at 900 K instead of 300 K."""
    return list(run_md(MDSpec(steps=120, seed=3, temperature=900.0, source="hot")))


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_reference_model_round_trips_and_judges_like_the_original(
    clean_frames: list[Frame], clash_frames: list[Frame], suffix: str, tmp_path: Path
) -> None:
    model = fit_reference(clean_frames)
    assert model.frozen and model.meta["frames"] == len(clean_frames)
    loaded = load_reference(save_reference(model, tmp_path / f"model{suffix}"))
    a = run(clash_frames, Pipeline(reference=model)).events
    b = run(clash_frames, Pipeline(reference=loaded)).events
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    anomalies = [e for e in a if e.event == "anomaly"]
    assert anomalies and anomalies[0].frame >= 150  # the clash, not its quiet prelude


def test_reference_mode_flags_a_run_the_trusted_one_does_not_cover(
    clean_frames: list[Frame], hot_frames: list[Frame]
) -> None:
    model = fit_reference(clean_frames)
    judged = run(hot_frames, Pipeline(reference=model)).events
    anomalies = [e for e in judged if e.event == "anomaly"]
    assert len(anomalies) == 1
    assert anomalies[0].frame == PipelineConfig().warmup_frames  # the first frame it may
    names = [f.name for f in anomalies[0].features]
    assert any("temperature" in n or "energy" in n or "disp" in n for n in names)
    # the same run, watched on its own, is its own normal
    alone = run(hot_frames, Pipeline()).events
    assert not [e for e in alone if e.event == "anomaly"]


def test_reference_model_is_shared_read_only_across_sources(
    clean_frames: list[Frame], clash_frames: list[Frame], tmp_path: Path
) -> None:
    model = fit_reference(clean_frames)
    before = save_reference(model, tmp_path / "before.json").read_text()
    pipeline = Pipeline(reference=model)
    for a, b in zip(clean_frames, clash_frames, strict=True):
        pipeline.process(a)
        pipeline.process(b)
    assert set(pipeline.sources) == {"clean", "clash"}
    assert save_reference(model, tmp_path / "after.json").read_text() == before


def test_reference_needs_enough_frames(clean_frames: list[Frame]) -> None:
    with pytest.raises(ValueError, match="needs more than"):
        fit_reference(clean_frames[:60])


def test_load_reference_rejects_other_state(tmp_path: Path) -> None:
    from trajwatch.detectors.state import save
    from trajwatch.detectors.zscore import ZScore

    path = save(ZScore(), tmp_path / "z.npz")
    with pytest.raises(ValueError, match="not a detector stack"):
        load_reference(path)


def test_vote_fusion_also_catches_the_clash(clash_frames: list[Frame]) -> None:
    config = PipelineConfig(fusion="vote", vote_k=2)
    events = run(clash_frames, Pipeline(config)).events
    anomalies = [e for e in events if e.event == "anomaly"]
    assert len(anomalies) == 1 and 150 <= anomalies[0].frame <= 153
    assert anomalies[0].detector.startswith("vote(2-of-2)")


def test_cli_reference_options_load_a_saved_model(
    clean_frames: list[Frame], tmp_path: Path
) -> None:
    from trajwatch import cli

    path = save_reference(fit_reference(clean_frames), tmp_path / "model.npz")
    parser = cli.build_parser()
    for command in (["scan", "run.extxyz"], ["monitor", "--no-tui"]):
        args = parser.parse_args([*command, "--reference", str(path), "--fusion", "vote"])
        config, model = cli._detection(args)
        assert config.fusion == "vote"
        assert model is not None and model.frozen
    args = parser.parse_args(["scan", "run.extxyz", "--save-reference", "x.npz"])
    with pytest.raises(ValueError, match="needs --reference"):
        cli._detection(args)
    args = parser.parse_args(["scan", "run.extxyz", "--reference", str(tmp_path / "no.npz")])
    with pytest.raises(FileNotFoundError):
        cli._detection(args)
