"""How work units are dealt out to processes (pure functions; no process group needed)."""

from __future__ import annotations

import pytest

from iclft.distributed import Shard


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("costs", [[1] * 10, [5, 1, 1, 1, 1, 1], [3, 3], list(range(1, 20))])
def test_assign_gives_contiguous_runs_with_none_empty(world, costs):
    owners = Shard(0, world).assign(costs)
    assert len(owners) == len(costs)
    assert owners == sorted(owners)  # contiguous runs, in rank order
    if len(costs) >= world:
        assert set(owners) == set(range(world))  # nobody idle while there is work for all
    assert all(0 <= o < world for o in owners)


def test_assign_balances_by_cost():
    owners = Shard(0, 2).assign([1] * 8 + [8])
    # the one large unit alone weighs as much as the eight small ones
    assert owners == [0] * 8 + [1]
    owners = Shard(0, 4).assign([1] * 40)
    assert [owners.count(r) for r in range(4)] == [10, 10, 10, 10]


def test_every_process_computes_the_same_assignment():
    costs = [7, 1, 3, 3, 9, 2, 2, 8]
    assert len({tuple(Shard(r, 3).assign(costs)) for r in range(3)}) == 1
    assert Shard(0, 3).round_robin(5) == [0, 1, 2, 0, 1]
