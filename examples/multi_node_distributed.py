"""The seed's "Multi-Node Distributed Training": one process per node, a torch process group over the overlay.

``sky.integrations.torch()`` sets MASTER_ADDR (rank 0's overlay IP), RANK, WORLD_SIZE, NCCL/GLOO_SOCKET_IFNAME and
initialises the process group before the function runs: NCCL where CUDA is available, Gloo where it is not (so this
also runs on CPU-only nodes). The seed's version called ``dist.init_process_group(backend="nccl")`` a second time
inside the function, which torch rejects; here the function uses the group the integration made.
"""

import skyward_ray as sky


@sky.compute
@sky.integrations.torch()
def train_distributed(data_shard):
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    world_size = dist.get_world_size()

    # Distributed training logic: every rank contributes rank + 1; the all-reduce sums them on every node.
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(total)
    return {"rank": rank, "world_size": world_size, "backend": dist.get_backend(), "sum": total.item()}


@sky.pool(
    provider=sky.VastAI(
        geolocation="US",
        min_reliability=0.98,  # Higher for distributed
    ),
    accelerator=sky.Accelerator("RTX 4090", count=1),
    nodes=4,  # Creates overlay network automatically
    image=sky.Image(pip=["torch"]),
)
def main():
    # Broadcast to all nodes
    results = train_distributed(None) @ sky
    for r in results:
        print(f"Node {r['rank']}/{r['world_size']} completed")
    expected = sum(range(1, len(results) + 1))
    print(f"all-reduce sum on every node: {[r['sum'] for r in results]} (expected {expected:.1f}, "
          f"backend {results[0]['backend']})")


if __name__ == "__main__":
    main()
