"""The parts the fault drills rely on, without a stack: components started again, the retry
delay, the generated final phase's graded models."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from mai_ops.dev import final_phase
from mai_ops.dev.stack import RESTART_AFTER_S, restart_component, restartable, start_components
from mai_ops.timeouts import RETRY_DELAY_S, retry_delay_s

SLEEPER = ["-c", "sleep 60"]


@pytest.fixture
def components():
    """Two stand-in components (``sh -c 'sleep 60'``) in one group, the first leading it."""
    procs = start_components(Path("/bin/sh"), [("leader", SLEEPER), ("worker", SLEEPER)], {})
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_component_killed_after_it_was_up_is_started_again_in_the_group(components):
    leader, worker = components
    worker.started -= RESTART_AFTER_S  # it has been up long enough
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert restartable(components, worker)
    restart_component(components, worker)
    again = components[1]
    assert again is not worker and again.poll() is None
    assert (again.component, again.command) == ("worker", SLEEPER)
    assert os.getpgid(again.pid) == leader.pid


def test_a_component_that_ends_at_once_or_leads_the_group_is_not(components):
    leader, worker = components
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert not restartable(components, worker)  # failing to start
    leader.started -= RESTART_AFTER_S
    assert not restartable(components, leader)  # the stack stops by its group
    standalone = subprocess.Popen(["/bin/true"])
    standalone.wait()
    assert not restartable([standalone], standalone)


def test_the_retry_delay_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MAI_OPS_RETRY_DELAY_S", raising=False)
    assert retry_delay_s() == RETRY_DELAY_S == 15  # then doubling, at most 5 min
    monkeypatch.setenv("MAI_OPS_RETRY_DELAY_S", "5")
    assert retry_delay_s() == 5


def test_a_graded_model_gets_its_teams_constant_in_place_of_the_sentinel():
    channels = 3
    bias = struct.pack("<3f", *[final_phase.SENTINEL] * channels)
    base = b"header" + bias + b"trailer"
    patched = final_phase.with_offset(base, channels, 0.25)
    assert patched == b"header" + struct.pack("<3f", 0.25, 0.25, 0.25) + b"trailer"
    with pytest.raises(ValueError, match="not found once"):
        final_phase.with_offset(base + bias, channels, 0.25)


def test_graded_teams_take_the_tracks_in_turn_best_first():
    tracks = [{"id": "a"}, {"id": "b"}]
    assert final_phase.expected_order(5, tracks) == {
        "a": ["t000", "t002", "t004"],
        "b": ["t001", "t003"],
    }
    offsets = [final_phase.team_offset(i, tracks) for i in (0, 2, 4)]
    assert offsets == sorted(offsets) and offsets[0] > 0
