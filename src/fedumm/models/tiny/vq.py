"""Training a tiny VQ image tokenizer on synthetic scenes, so the tiny unified models' image
tokens mean something (a random VQ decodes every code to noise, and a checker would then
measure noise).

The tokenizer is a VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation
Learning") with an l2-normalised codebook as in LlamaGen / Janus (Sun et al. 2024, "Autoregressive
Model Beats Diffusion"): the encoder output z and every code e_j are unit vectors, the code of z
is argmax_j <z, e_j> (= argmin ||z - e_j||^2 on unit vectors, which is what the transformers
quantizers compute at encode time), and

    loss = mean_px w(x) (x - D(z + sg(e - z)))^2 + ||sg(z) - e||^2 + beta ||z - sg(e)||^2

(straight-through estimator for the decoder's gradient, codebook and commitment terms,
beta = 0.25). The reconstruction term weighs object pixels ``_FOREGROUND_WEIGHT`` times the
black background (w = 1 there): the scenes are mostly background, and an unweighted loss
leaves the objects' colours wrong. Codes unused for ``_RESTART_EVERY`` steps restart on random encoder outputs of
the current batch (dead-code restarts keep the whole codebook in use). The family supplies
``encode`` (pixels -> z, (B, C, h, w)) and ``decode`` (quantised z -> pixels); the codebook
rows are written back unit-norm, so encode-then-decode through the family's own modules is
what was trained.

Scenes are the synthetic data's (``fedumm.data.synthetic``): one to three shapes of any
colour on black, drawn exactly as the data is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fedumm.data.synthetic import COLORS, SHAPES, render_image

_BETA = 0.25
_FOREGROUND_WEIGHT = 10.0
_BACKGROUND_LEVEL = -0.9  # pixels whose brightest channel is below this (in [-1, 1]) are background
_RESTART_EVERY = 25
_SHAPE_FRACTION = 4  # a shape's box is a quarter of the image side, as in the synthetic data


def synthetic_scenes(count: int, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """``count`` uint8 scenes (count, size, size, 3): 1 to 3 shapes of random shape and colour,
    later shapes drawn over earlier ones."""
    size = max(4, round(image_size / _SHAPE_FRACTION))
    colours = list(COLORS)
    out = np.zeros((count, image_size, image_size, 3), dtype=np.uint8)
    for i in range(count):
        for _ in range(int(rng.integers(1, 4))):
            corner = (int(rng.integers(0, image_size - size + 1)), int(rng.integers(0, image_size - size + 1)))
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            one = np.asarray(render_image(shape, colours[int(rng.integers(len(colours)))], [corner], image_size))
            out[i] = np.where(one.any(axis=-1, keepdims=True), one, out[i])
    return out


def to_pixels(scenes: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (the Janus / Emu3 normalisation)."""
    return torch.from_numpy(scenes).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@dataclass(frozen=True)
class VQTraining:
    steps: int
    seconds: float
    final_loss: float


def train_vq(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    codebook: torch.nn.Embedding,
    parameters: Sequence[torch.nn.Parameter],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    image_size: int = 32,
    seed: int = 0,
) -> VQTraining:
    """Train ``parameters`` (encoder, decoder, codebook) on fresh synthetic scenes each step
    (Adam), then write the codebook back with unit rows.

    Runs on one intra-op thread: a reduction split over another number of threads rounds
    differently, and a few hundred steps of training amplify that into a different tokenizer,
    so a build is the same on every machine (and under pytest, which runs on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_vq(encode, decode, codebook, parameters, steps, batch_size, lr, image_size, seed)
    finally:
        torch.set_num_threads(threads)


def _train_vq(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    codebook: torch.nn.Embedding,
    parameters: Sequence[torch.nn.Parameter],
    steps: int,
    batch_size: int,
    lr: float,
    image_size: int,
    seed: int,
) -> VQTraining:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    usage = torch.zeros(codebook.num_embeddings)
    start, loss = time.perf_counter(), torch.tensor(float("nan"))
    for step in range(steps):
        pixels = to_pixels(synthetic_scenes(batch_size, rng, image_size))
        z = encode(pixels)
        b, c, h, w = z.shape
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, c), dim=-1)
        codes = F.normalize(codebook.weight, dim=-1)
        index = (flat @ codes.T).argmax(dim=-1)
        quantised = codes[index]
        usage += torch.bincount(index, minlength=codebook.num_embeddings)
        straight = flat + (quantised - flat).detach()
        recon = decode(straight.view(b, h, w, c).permute(0, 3, 1, 2))
        foreground = (pixels.amax(dim=1, keepdim=True) > _BACKGROUND_LEVEL).float()
        weight = 1.0 + (_FOREGROUND_WEIGHT - 1.0) * foreground
        loss = (
            (weight * (recon - pixels) ** 2).mean()
            + F.mse_loss(quantised, flat.detach())
            + _BETA * F.mse_loss(flat, quantised.detach())
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % _RESTART_EVERY == 0:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    codebook.weight[dead] = flat[torch.randint(len(flat), (len(dead),))].detach()
            usage.zero_()
    with torch.no_grad():
        codebook.weight.copy_(F.normalize(codebook.weight, dim=-1))
    return VQTraining(steps=steps, seconds=time.perf_counter() - start, final_loss=float(loss.detach()))


def dominant_colour(image: Image.Image, min_brightness: int = 60) -> str | None:
    """The synthetic palette colour nearest to most non-background pixels (None: all dark)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    pixels = pixels[pixels.max(axis=1) >= min_brightness]
    if not len(pixels):
        return None
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    nearest = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(axis=1)
    return list(COLORS)[int(np.bincount(nearest, minlength=len(palette)).argmax())]


def reconstruction_quality(originals: Sequence[Image.Image], reconstructions: Sequence[Image.Image]) -> dict:
    """Mean absolute per-pixel error (0-255 scale, over channels) and the fraction of pairs whose
    dominant colour (``dominant_colour``) agrees."""
    errors, agree = [], []
    for original, recon in zip(originals, reconstructions, strict=True):
        a = np.asarray(original.convert("RGB"), dtype=np.float32)
        b = np.asarray(recon.convert("RGB").resize(original.size), dtype=np.float32)
        errors.append(float(np.abs(a - b).mean()))
        agree.append(dominant_colour(original) == dominant_colour(recon))
    return {"mean_abs_error": float(np.mean(errors)), "colour_agreement": float(np.mean(agree)), "n": len(errors)}
