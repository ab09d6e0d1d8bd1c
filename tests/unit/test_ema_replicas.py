"""The EMA target's cross-rank check on a real 2-process gloo group: broadcast, agreement, mismatch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results):
    from vwm.train.ema import ReplicaMismatch, assert_identical_across_ranks, broadcast_from_rank0

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different init on each rank
    target = torch.nn.Linear(8, 4)
    broadcast_from_rank0(target)
    agreed = assert_identical_across_ranks(target, step=1).tolist()
    if rank == 1:
        with torch.no_grad():
            target.weight[0, 0] += 1e-6  # one rank drifts by one ulp-scale change
    try:
        assert_identical_across_ranks(target, step=2)
        results[rank] = ("no error", agreed)
    except ReplicaMismatch as e:
        results[rank] = (str(e), agreed)
    dist.destroy_process_group()


def test_broadcast_makes_targets_identical_and_drift_stops_the_run():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_port(), results), nprocs=2, join=True)
        out = dict(results)
    assert out[0][1] == out[1][1], "after the broadcast both ranks hold the same checksum"
    for rank in (0, 1):
        assert "EMA target encoder differs between ranks at step 2" in out[rank][0]


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_update_target_uses_the_engine_gather(momentum):
    from vwm.config import OptimConfig
    from vwm.train.ema import update_target
    from vwm.train.engine import LocalEngine

    model = torch.nn.Module()
    model.encoder = torch.nn.Linear(3, 3)
    engine = LocalEngine(model, OptimConfig(), torch.device("cpu"))
    target = torch.nn.Linear(3, 3)
    before = target.weight.clone()
    update_target(engine, target, momentum, source="encoder")
    torch.testing.assert_close(target.weight, momentum * before + (1 - momentum) * model.encoder.weight)
