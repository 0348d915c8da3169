"""The claim that lets one scoring run at a time publish a night (real files, real
processes)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from recsys import io
from recsys.publish.claim import NightClaimedError, claim_night, claim_uri
from recsys.spark import process_start

NIGHT = "2026-11-23"


def table(tmp_path) -> str:
    return io.normalize_uri(str(tmp_path / "tables" / "movielens_recommendations"))


def owner_of(tmp_path, night: str = NIGHT) -> dict:
    return json.loads(io.read_text(claim_uri(table(tmp_path), night)))


def write_claim(tmp_path, text: str) -> str:
    uri = claim_uri(table(tmp_path), NIGHT)
    io.write_text(uri, text)
    return uri


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_the_claim_names_its_run_and_goes_when_the_run_ends(tmp_path):
    uri = claim_uri(table(tmp_path), NIGHT)
    assert uri.endswith("/tables/_staging/movielens_recommendations/run_date=2026-11-23.claim")
    with claim_night(table(tmp_path), NIGHT, "run-a") as held:
        assert held == uri
        owner = owner_of(tmp_path)
        assert (owner["run_id"], owner["host"], owner["pid"]) == \
            ("run-a", socket.gethostname(), os.getpid())
        assert not [n for n in os.listdir(io.local_path(uri).rsplit("/", 1)[0])
                    if n.endswith(".tmp")]
    assert not io.exists(uri)
    with pytest.raises(RuntimeError, match="boom"):
        with claim_night(table(tmp_path), NIGHT, "run-b"):
            raise RuntimeError("boom")
    assert not io.exists(uri)  # a failed run lets the night go as well


def test_a_second_run_of_the_night_is_refused_and_the_first_keeps_its_claim(tmp_path):
    with claim_night(table(tmp_path), NIGHT, "run-a"):
        with pytest.raises(NightClaimedError) as refused:
            with claim_night(table(tmp_path), NIGHT, "run-b"):
                pytest.fail("two runs held one night")
        said = str(refused.value)
        assert f"the night {NIGHT} is being published by run run-a (process {os.getpid()} " \
               "on this host, since " in said and "wait for it to finish" in said
        assert owner_of(tmp_path)["run_id"] == "run-a"
        # another night, or the same night of other tables, is free
        with claim_night(table(tmp_path), "2026-11-24", "run-c"):
            assert owner_of(tmp_path, "2026-11-24")["run_id"] == "run-c"
        with claim_night(io.normalize_uri(str(tmp_path / "other" / "recs")), NIGHT, "run-d"):
            pass
    assert not io.exists(claim_uri(table(tmp_path), NIGHT))


def test_a_claim_left_by_a_killed_run_on_this_host_is_taken_over(tmp_path, caplog):
    write_claim(tmp_path, json.dumps({"run_id": "killed", "host": socket.gethostname(),
                                      "pid": dead_pid(), "process_start": None,
                                      "since": "2026-11-23T02:15:00+00:00"}))
    with caplog.at_level(logging.WARNING, logger="recsys.publish.claim"):
        with claim_night(table(tmp_path), NIGHT, "run-a"):
            assert owner_of(tmp_path)["run_id"] == "run-a"
    assert "taking over the claim on the night 2026-11-23 from run killed" in caplog.text


def test_a_process_id_reused_by_a_later_process_does_not_hold_the_claim(tmp_path):
    # the claimed id runs (this very process) but started at another time: not the run
    write_claim(tmp_path, json.dumps({"run_id": "killed", "host": socket.gethostname(),
                                      "pid": os.getpid(),
                                      "process_start": process_start(os.getpid()) - 1}))
    with claim_night(table(tmp_path), NIGHT, "run-a"):
        assert owner_of(tmp_path)["run_id"] == "run-a"


def test_a_claim_from_another_host_or_unreadable_is_refused_with_the_file_to_remove(tmp_path):
    uri = write_claim(tmp_path, json.dumps({"run_id": "r1", "host": "worker-7.example",
                                            "pid": dead_pid(), "since": "2026-11-23T02:15"}))
    with pytest.raises(NightClaimedError) as refused:
        with claim_night(table(tmp_path), NIGHT, "run-a"):
            pass
    assert str(refused.value) == (
        f"the night {NIGHT} is being published by run r1 (process "
        f"{json.loads(io.read_text(uri))['pid']} on host worker-7.example, since "
        f"2026-11-23T02:15): wait for it to finish; if that run is no longer running, "
        f"remove {uri} and run again (the nightly's retention removes it once that run is "
        "a day old)")
    assert owner_of(tmp_path)["run_id"] == "r1"
    write_claim(tmp_path, "{not json")
    with pytest.raises(NightClaimedError, match=r"cannot be read: if no scoring run of that "
                                                r"night is running, remove it and run again"):
        with claim_night(table(tmp_path), NIGHT, "run-a"):
            pass
    assert io.read_text(uri) == "{not json"


def test_without_hard_links_the_claim_is_an_exclusive_create(tmp_path, monkeypatch):
    """FAT and some network mounts have no hard links (EPERM / ENOTSUP)."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(os, "link", no_links)
    with claim_night(table(tmp_path), NIGHT, "run-a"):
        assert owner_of(tmp_path)["run_id"] == "run-a"
        with pytest.raises(NightClaimedError, match="being published by run run-a"):
            with claim_night(table(tmp_path), NIGHT, "run-b"):
                pass
    assert not io.exists(claim_uri(table(tmp_path), NIGHT))
