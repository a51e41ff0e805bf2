"""IConE in a training loop of your own: icone sets it up (the method, its optimizer with the instance table,
the train step with its schedules, precision and sparse-aware clipping, the views, the loader), the loop is
yours. Run: python examples/own_loop.py [STEPS]"""

import sys

import torch

import icone

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
data = icone.load_data("digits")  # or icone.load_data("path/to/images"), any source `icone train --data` reads
setup = icone.setup(
    data,  # one table row per training sample
    "icone",
    batch_size=8,
    backbone="smallcnn",
    options={"model.width": 16, "icone.diversity": "hinge", "optim.lr": 1e-3, "optim.warmup_epochs": 0},
)
method, views = setup.method, setup.views[0]  # two augmented views per sample, made on the batch's device
method.initialize(setup.loaders.plain())  # IConE starts each table row at its sample's untrained embedding

method.train()
for step, (x, index, _) in enumerate(setup.loaders.epoch(0), 1):  # a shuffled epoch, batches of 8 instances
    # the lr of the step, the views, the forward, backward, clipping (the table's sparse rows included), the optimizer
    loss, metrics = setup.train_step(x, index, views)
    if step % 10 == 0 or step == 1:
        parts = ", ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
        print(f"step {step}: loss {loss.item():.4f} ({parts})")
    if step == steps:
        break

backbone = method.backbone.eval()  # the encoder: pooled features of B x C x H x W
with torch.no_grad():
    x = torch.from_numpy(data.test.samples[:4]).to(setup.runtime.device)
    print("features:", tuple(backbone(x).shape))
