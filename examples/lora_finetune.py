"""LoRA fine-tuning on a ModelOpt checkpoint (frozen NVFP4 weights, trainable adapters).

    python examples/lora_finetune.py [checkpoint] [steps]
"""
import sys

import torch
from peft import LoraConfig

import motensor
import motensor.lora

path = sys.argv[1] if len(sys.argv) > 1 else "tests/data/demo"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
device = "cuda" if torch.cuda.is_available() else "cpu"

model = motensor.from_pretrained(path, dtype=dtype, device=device)
tok = motensor.load_tokenizer(path)
model = motensor.lora.get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
model.print_trainable_parameters()

ids = tok("In the beginning God created the heaven and the earth.", return_tensors="pt").input_ids.to(device)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
for step in range(steps):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    print(f"step {step:3d}  loss {loss.item():.3f}")
model.save_pretrained("lora-adapter")  # the adapter only; reload: motensor.lora.load_adapter(base, "lora-adapter")
