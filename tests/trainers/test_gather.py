import json
import socket

import torch.multiprocessing as mp

from tests.trainers.gather_worker import run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_negatives_equal_single_process_concatenated_batch(tmp_path):
    mp.spawn(run, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, r in results.items():
            assert r["same_keys"], name
            assert abs(r["loss"] - r["ref_loss"]) < 1e-5, (name, rank, r)
            assert r["max_grad"] > 1e-4, (name, r)  # the gradients are not trivially zero
            assert r["max_grad_diff"] < 1e-5 + 1e-4 * r["max_grad"], (name, rank, r)
