"""Run under ``horovodrun -np 2``: allreduce, then DistributedOptimizer steps on rank-specific data.

Writes each rank's final weights to ``<out>/rank<r>.pt`` so the test can compare them.
"""

import sys

import horovod.torch as hvd
import torch


def main(out_dir: str) -> None:
    hvd.init()
    total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
    assert total.item() == sum(range(1, hvd.size() + 1)), total

    torch.manual_seed(hvd.rank())  # different init per rank: broadcast must make them equal
    model = torch.nn.Linear(4, 1)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters()
    )
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    data = torch.randn(16, 4) * (hvd.rank() + 1)  # each rank sees different data
    for _ in range(5):
        optimizer.zero_grad()
        loss = (model(data) - 1.0).pow(2).mean()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), f"{out_dir}/rank{hvd.rank()}.pt")
    print(f"rank {hvd.rank()}/{hvd.size()} allreduce={total.item()} loss={loss.item():.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
