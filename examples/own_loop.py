"""IConE in a training loop of your own: the method, its optimizer (with the instance table) and the views
from icone, everything else yours. Run: python examples/own_loop.py [STEPS]"""

import sys

import torch

import icone

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
data = icone.load_data("digits")  # or icone.load_data("path/to/images"), any source `icone train --data` reads
train = data.train
method = icone.build_method(
    "icone",
    num_instances=len(train),  # one table row per training sample
    sample_shape=(data.in_channels, *data.spatial_shape),
    backbone="smallcnn",
    options={"model.width": 16, "icone.diversity": "hinge"},
)
optimizer = icone.build_optimizer(method, lr=1e-3)  # AdamW; the table has its own group (and lr scale)
views = icone.build_views(method)  # two augmented views per sample, made on the batch's device
rows = torch.arange(len(train))  # IConE starts each table row at its sample's untrained embedding
method.initialize((torch.from_numpy(train.samples[chunk.numpy()]), chunk) for chunk in rows.split(256))

generator = torch.Generator().manual_seed(0)
method.train()
for step in range(1, steps + 1):
    index = torch.randint(0, len(train), (8,), generator=generator)  # a batch of 8 instances
    x = torch.from_numpy(train.samples[index.numpy()])
    loss, metrics = method(views(x), index)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    method.after_optimizer_step(step, steps)
    if step % 10 == 0 or step == 1:
        parts = ", ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
        print(f"step {step}: loss {loss.item():.4f} ({parts})")

backbone = method.backbone.eval()  # the encoder: pooled features of B x C x H x W
with torch.no_grad():
    print("features:", tuple(backbone(torch.from_numpy(data.test.samples[:4])).shape))
