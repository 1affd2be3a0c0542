"""The seed's "High-Reliability Production Run": an on-demand A100 pool held as an object and entered with ``with``.

The seed's snippet stops at building the pool; this runs one inference call on it.
"""

import skyward_ray as sky


@sky.compute
def production_inference(data):
    # Critical inference workload: a stand-in model that scores each input.
    predictions = [{"input": x, "score": round(1 / (1 + len(str(x))), 3)} for x in data]
    return predictions


pool = sky.ComputePool(
    provider=sky.VastAI(
        min_reliability=0.99,  # Maximum reliability
        geolocation="US",  # Consistent latency
    ),
    accelerator="A100",
    allocation="on-demand",  # No interruptions
    image=sky.Image(pip=["torch", "transformers"]),
)

if __name__ == "__main__":
    with pool:
        predictions = production_inference(["hello", "world", 42]) >> pool
        print(f"Predictions: {predictions}")
