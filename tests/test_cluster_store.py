"""The deployment checks of `serve --ray-address` that need no cluster: the store must fit (SQLite only
on an asserted shared data dir), the shared-dir marker each host verifies, the listen choice.
The same refusals on a real multi-node cluster: tests/test_cluster_deploy.py."""
from __future__ import annotations

import json

import pytest

from syncopate.cli import main
from syncopate.cluster_store import MARKER, StoreMismatch, check_store_fits, verify_shared_data_dir, write_marker

PG = "postgresql://postgres@127.0.0.1:5432/test"


def test_sqlite_is_refused_on_a_cluster_unless_the_dir_is_asserted_shared():
    check_store_fits(None, None, False)                    # local: SQLite is the default
    check_store_fits("10.0.0.1:6379", PG, False)           # cluster + PostgreSQL
    with pytest.raises(StoreMismatch, match="--shared-data-dir"):
        check_store_fits("10.0.0.1:6379", None, False)
    check_store_fits("10.0.0.1:6379", None, True)


def test_a_host_starts_only_where_it_sees_the_drivers_marker(tmp_path):
    spec = {"data_dir": str(tmp_path)}
    verify_shared_data_dir(spec)                           # no token: not a shared-dir deployment
    token = write_marker(str(tmp_path), "s1")
    assert json.loads((tmp_path / MARKER).read_text())["token"] == token
    verify_shared_data_dir({**spec, "shared_dir_token": token}, where="node 10.0.0.2")

    other = tmp_path / "node-local"                        # another node's own directory at that path
    other.mkdir()
    with pytest.raises(StoreMismatch, match=r"on node 10.0.0.3 has no marker .* not shared by every node"):
        verify_shared_data_dir({"data_dir": str(other), "shared_dir_token": token}, where="node 10.0.0.3")
    write_marker(str(other), "s2")                          # a stale marker of another deployment
    with pytest.raises(StoreMismatch, match="another deployment's marker"):
        verify_shared_data_dir({"data_dir": str(other), "shared_dir_token": token}, where="node 10.0.0.3")
    assert not (other / "syncopate.db").exists()


@pytest.mark.parametrize("argv, message", [
    (["--gateways", "per-node"], "--gateways per-node needs a cluster"),
    (["--host", "node"], "--host node needs a cluster"),
    (["--gateways", "two"], "--gateways takes a count or 'per-node'"),
    (["--gateways", "0"], "--gateways must be at least 1"),
])
def test_serve_refuses_a_listen_choice_that_does_not_fit(tmp_path, capsys, argv, message):
    assert main(["serve", "--data-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                  # refused before anything was written
