"""Shared fixtures: real EMT MD trajectories, generated once per test session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trajwatch.frame import Frame
from trajwatch.simulate import MDSpec, run_md, write_with_ase

CLASH_FRAME = 150
"""Frame index at which the faulty fixture pushes an atom into its neighbour."""


@pytest.fixture(scope="session")
def clash_at() -> int:
    """Frame index at which the faulty fixture pushes an atom into its neighbour."""
    return CLASH_FRAME


@pytest.fixture(scope="session")
def clean_frames() -> list[Frame]:
    """300 frames of fcc Cu (108 atoms) at 300 K under a Langevin thermostat."""
    return list(run_md(MDSpec(steps=300, seed=1, source="clean")))


@pytest.fixture(scope="session")
def clash_frames() -> list[Frame]:
    """The same kind of run, with one atom pushed to 0.9 Å of its neighbour at frame 150."""
    spec = MDSpec(steps=300, seed=2, fault="clash", fault_frame=CLASH_FRAME, source="clash")
    return list(run_md(spec))


@pytest.fixture(scope="session")
def clean_file(clean_frames: list[Frame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_with_ase(clean_frames, tmp_path_factory.mktemp("md") / "clean.extxyz")


@pytest.fixture(scope="session")
def clash_file(clash_frames: list[Frame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_with_ase(clash_frames, tmp_path_factory.mktemp("md") / "clash.extxyz")


@pytest.fixture
def free_endpoint() -> str:
    """A tcp endpoint on 127.0.0.1 with a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"
