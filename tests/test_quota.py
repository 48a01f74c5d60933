"""The weekly GPU quota: `imggenhub quota` says what GetAcceleratorQuotaStatistics says."""

from __future__ import annotations

import json


def test_quota_says_used_left_and_refresh(emulator, cli):
    emulator.gpu_used_seconds = 12.5 * 3600
    emulator.gpu_quota_hours = 30.0
    code, out, err = cli("quota")
    assert code == 0, err
    assert "12.5 h used of 30.0 h this week, 17.5 h left; it refreshes at 2026-11-30T00:00:00Z" in out
    code, out, err = cli("quota", "--json")
    data = json.loads(out)
    assert (data["gpu_hours_used"], data["gpu_hours_left"], data["gpu_hours_total"]) == (12.5, 17.5, 30.0)
    assert data["refreshes_at"] == "2026-11-30T00:00:00Z"


def test_quota_without_credentials_is_one_sentence(cli, monkeypatch):
    code, out, err = cli("quota")
    assert code == 4 and len(err.strip().splitlines()) == 1


def test_quota_when_kaggle_cannot_be_reached(emulator, cli, monkeypatch):
    monkeypatch.setenv("IMGGENHUB_RETRY_TOTAL", "0.5")
    emulator.faults.set(server_error=100)
    code, out, err = cli("quota", "--timeout", "2")
    assert code == 5 and "reading the GPU quota" in err
