"""The seed's "Cost-Optimized Batch Processing": ten calls gathered concurrently on an RTX 3080 pool."""

import skyward_ray as sky


@sky.compute
def process_batch(batch_id: int) -> dict:
    # Processing logic
    return {"batch": batch_id, "status": "complete"}


@sky.pool(
    provider=sky.VastAI(
        min_reliability=0.90,  # Lower for fault-tolerant work
        bid_multiplier=1.1,  # Aggressive bidding
    ),
    accelerator="RTX 3080",
    image=sky.Image(pip=["numpy", "scipy"]),
)
def main():
    # Process multiple batches in parallel
    results = sky.gather(
        process_batch(i) for i in range(10)
    ) >> sky
    print(f"Processed {len(results)} batches")


if __name__ == "__main__":
    main()
