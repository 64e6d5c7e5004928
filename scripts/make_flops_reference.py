#!/usr/bin/env python3
"""torch's count of a BERT training step's arithmetic, for `distill`'s model-FLOP figures.

    make_flops_reference.py OUT.json

A small random BertModel (no pooler, eager attention), one row at a time at each of a few
lengths (so that no padding is counted): torch.utils.flop_counter.FlopCounterMode counts the
matrix products of the forward pass and of the backward pass into every weight and input.
The Rust side's formula (`model::work::training_flops`) must give the same totals from the
rows' lengths alone.
"""
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             vocab_size=100, max_position_embeddings=64)
LENGTHS = [5, 9, 12, 1]


def main() -> int:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SHAPE, attn_implementation="eager"), add_pooling_layer=False)
    model.train()
    forward = training = 0
    for n in LENGTHS:
        ids = torch.randint(1, SHAPE["vocab_size"], (1, n))
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(input_ids=ids).last_hidden_state
            fwd = counter.get_total_flops()
            out.float().pow(2).sum().backward()
        forward += fwd
        training += counter.get_total_flops()
    with open(sys.argv[1], "w") as f:
        json.dump({"shape": SHAPE, "lengths": LENGTHS, "forward_flops": forward,
                   "training_flops": training}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
