"""Helpers shared by the demo v2 recipes."""
import os
import time

import torch


class Every:
    """Wall-clock timer: `due()` is true once per `seconds` (the first time `seconds` after
    construction)."""

    def __init__(self, seconds):
        self.seconds, self.last = seconds, time.time()

    def due(self):
        if time.time() - self.last > self.seconds:
            self.last = time.time()
            return True
        return False


def resume(ckpt, init, model, opt, state, device):
    """Continues from the checkpoint file `ckpt` when it exists (model, optimizer and the loop's
    `state`), else starts from the weights in the comma-separated safetensors files `init` with
    a fresh optimizer, else from `model` as it is. Returns `(state, checkpoint or None)`: the
    checkpoint for the caller's own entries."""
    if ckpt and os.path.exists(ckpt):
        ck = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        print(f"resumed from {ckpt} at step {ck['state']['step']}", flush=True)
        return ck["state"], ck
    if init:
        from safetensors.torch import load_file

        weights = {}
        for path in init.split(","):
            weights.update(load_file(path))
        model.load_state_dict(weights)
        print(f"weights from {init} (fresh optimizer)", flush=True)
    return state, None


def save_checkpoint(path, **parts):
    """`parts` to `path` through a temporary file, so that a piece killed mid-write leaves the
    previous checkpoint whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(parts, path + ".tmp")
    os.replace(path + ".tmp", path)
