"""The seed's "Single Node GPU Training": one call on one RTX 4090 node, inside a ``@sky.pool`` function."""

import skyward_ray as sky


@sky.compute
def train_model(config: dict) -> dict:
    import torch

    # Training code here: a few steps of a tiny model, on the GPU when there is one.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.nn.Linear(8, 1).to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(64, 8, device=device)
    target = data.sum(dim=1, keepdim=True)
    loss = torch.tensor(0.0)
    for _ in range(config["epochs"] * 10):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(data), target)
        loss.backward()
        optimiser.step()
    return {"loss": round(loss.item(), 4), "device": device}


@sky.pool(
    provider=sky.VastAI(
        geolocation="US",
        min_reliability=0.95,
    ),
    accelerator="RTX 4090",
    image=sky.Image(pip=["torch", "transformers"]),
    allocation="spot-if-available",
)
def main():
    result = train_model({"epochs": 10}) >> sky
    print(f"Training result: {result}")


if __name__ == "__main__":
    main()
