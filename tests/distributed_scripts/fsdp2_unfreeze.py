"""Worker for tests/test_fsdp2_unfreeze.py: plain PyTorch FSDP2 (``fully_shard``) on CPU with a layer
unfrozen after the first forward, in fp32 or with a bf16 mixed-precision policy.

``torchrun --standalone --nproc_per_node 2 fsdp2_unfreeze.py fp32|mp RESULT``; each rank writes
``RESULT.rank<r>``: whether training went through, the error otherwise, and a sha256 of the unfrozen
layer's full weight.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from worker_end import end_cleanly


def main() -> None:
    mode, result = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    block = lambda: nn.Sequential(nn.Linear(16, 16), nn.Tanh())  # noqa: E731
    model = nn.Sequential(nn.Linear(8, 16), block(), block(), nn.Linear(16, 2))
    for param in model[1].parameters():
        param.requires_grad_(False)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mode == "mp" else None
    for module in (model[1], model[2], model):
        fully_shard(module, mp_policy=policy or MixedPrecisionPolicy())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    report = {"rank": rank, "mode": mode, "ok": True, "error": ""}
    try:
        for step in range(6):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)
            rows = slice(rank * 4, (rank + 1) * 4)
            nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 2:  # unfrozen after the first forward, as gradual unfreezing would
                for param in model[1].parameters():
                    param.requires_grad_(True)
                optimizer.add_param_group({"params": list(model[1].parameters())})
        weight = model[1][0].weight.full_tensor()
        report["hash"] = hashlib.sha256(weight.detach().float().numpy().tobytes()).hexdigest()
    except RuntimeError as err:
        report.update(ok=False, error=str(err)[:300])
    with open(f"{result}.rank{rank}", "w") as handle:
        json.dump(report, handle)
    end_cleanly()


if __name__ == "__main__":
    main()
