"""A dense autoencoder trained on normal-looking events: reconstruction error and embeddings.

Events the network reconstructs badly are unlike the traffic it learned; its latent code is a
compact description of each event that the judge can use. Training is seeded and
deterministic on CPU; weights are saved as safetensors (no pickle).

The network sees its inputs in robust units, clipped (`input_scaling`, `input_clip`): each
input centred on its training median and divided by its robust spread, then limited to
±`input_clip`. With plain z-scores a few heavy-tailed inputs (an amount, a rare count) put
values tens of units out, and their squared errors dominate both the training loss and the
score, so the network spends its capacity on them and every other input's deviation is
drowned. Past `input_clip` robust units a value is extreme already; how far past adds no
evidence the other inputs cannot outvote.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn import functional as F

from hybrid_ad.config import AutoencoderConfig
from hybrid_ad.errors import ArtifactError
from hybrid_ad.stages.base import Stage, read_json_file

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
SCORE_BATCH = 65_536
MIN_BATCH = 32
"""The smallest batch that `min_steps_per_epoch` shrinks a batch to."""
IQR_TO_SD = 1.349
"""Interquartile range of a normal distribution in standard deviations."""


def _mlp(widths: list[int], activation: str, dropout: float) -> nn.Sequential:
    """Linear layers between consecutive widths, activations between (none after the last)."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _Network(nn.Module):
    def __init__(self, n_inputs: int, config: AutoencoderConfig) -> None:
        super().__init__()
        hidden = list(config.hidden_layers)
        self.encoder = _mlp(
            [n_inputs, *hidden, config.latent_dim], config.activation, config.dropout
        )
        self.decoder = _mlp(
            [config.latent_dim, *reversed(hidden), n_inputs], config.activation, config.dropout
        )

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encoder(inputs)
        return self.decoder(latent), latent


class _Forward:
    """The eval-mode forward pass of a `_Network` as the functional calls its modules make
    (`F.linear`, then the activation; dropout is the identity in eval mode), on the same
    weights (detached views: training and `load_state_dict` update them in place).

    The same kernels on the same tensors, so the same numbers; without the module machinery
    around each of the ten layers, which on one event cost more than the arithmetic."""

    def __init__(self, network: _Network) -> None:
        self.network = network
        self.encoder = self._layers(network.encoder)
        self.decoder = self._layers(network.decoder)

    @staticmethod
    def _layers(
        sequence: nn.Sequential,
    ) -> list[tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]]:
        layers: list = []
        for module in sequence:
            if isinstance(module, nn.Linear):
                layers.append([module.weight.detach(), module.bias.detach(), None])
            elif isinstance(module, nn.ReLU):
                layers[-1][2] = torch.relu
            elif isinstance(module, nn.Tanh):
                layers[-1][2] = torch.tanh
            elif isinstance(module, nn.GELU):
                layers[-1][2] = functools.partial(F.gelu, approximate=module.approximate)
            elif not isinstance(module, nn.Dropout):
                raise TypeError(f"autoencoder: no functional forward for {type(module).__name__}")
        return [(weight, bias, activation) for weight, bias, activation in layers]

    def __call__(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, latent), as `network(inputs)` in eval mode."""
        values = inputs
        for weight, bias, activation in self.encoder:
            values = F.linear(values, weight, bias)
            if activation is not None:
                values = activation(values)
        latent = values
        for weight, bias, activation in self.decoder:
            values = F.linear(values, weight, bias)
            if activation is not None:
                values = activation(values)
        return values, latent


EpochCallback = Callable[[int, float, float], None]
"""Called after each epoch with (epoch, training loss, validation loss)."""


class Autoencoder(Stage):
    """scikit-learn style wrapper: `fit`, then `reconstruction_error` and `embed`."""

    def __init__(self, config: AutoencoderConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.network_: _Network | None = None
        self.n_inputs_: int | None = None
        self.history_: list[dict[str, float]] = []
        self.centre_: np.ndarray | None = None  # per input: subtracted, then
        self.spread_: np.ndarray | None = None  # divided by, then clipped to +-clip_
        self.clip_: float | None = None  # None: not clipped
        self.sample_rate_ = 1.0
        """The share of its candidate rows the network was trained on (`training_share`)."""
        self._forward: _Forward | None = None  # the network's scoring forward, on first use

    def fit_scaling(self, train: np.ndarray) -> Autoencoder:
        """Centre and spread of every input from the training rows (`input_scaling`).

        `robust`: the median and IQR / 1.349 (a normal input's standard deviation), which a
        heavy tail does not inflate. Where the IQR is 0 (a spike at one value, a flag set on
        under a quarter of the events) the standard deviation, and 1 for a constant.
        `as_features`: unchanged."""
        values = np.asarray(train, dtype=np.float64)
        n_inputs = values.shape[1]
        if self.config.input_scaling == "as_features" or len(values) == 0:
            self.centre_, self.spread_, self.clip_ = np.zeros(n_inputs), np.ones(n_inputs), None
            return self
        q25, centre, q75 = np.percentile(values, [25, 50, 75], axis=0)
        iqr_spread, sd = (q75 - q25) / IQR_TO_SD, values.std(axis=0)
        spread = np.where(iqr_spread > 0, iqr_spread, np.where(sd > 0, sd, 1.0))
        self.centre_, self.spread_, self.clip_ = centre, spread, self.config.input_clip
        return self

    def scale_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """The inputs as the network sees them (float32): centred, divided, clipped."""
        assert self.centre_ is not None and self.spread_ is not None
        scaled = (np.asarray(inputs, dtype=np.float64) - self.centre_) / self.spread_
        if self.clip_ is not None:  # in place; np.clip's checks cost more on a few rows
            np.maximum(scaled, -self.clip_, out=scaled)
            np.minimum(scaled, self.clip_, out=scaled)
        return np.ascontiguousarray(scaled, dtype=np.float32)

    def batch_size(self, n_rows: int, sample_rate: float = 1.0) -> int:
        """`batch_size`, made smaller on small data so that an epoch takes at least
        `min_steps_per_epoch` optimiser steps (batches of at least 32): with 1,024 per batch
        a 1,000-event training set would get one step an epoch, 40 in all, and stay untrained.

        On a sample (`sample_rate` < 1) batches shrink by the rate too, so an epoch takes the
        optimiser steps the whole data would: the network is bound by its steps, not by the
        rows each sees (BENCHMARKS.md, one machine), and a smaller batch costs less per step.
        """
        steps = self.config.min_steps_per_epoch
        size = self.config.batch_size
        largest = min(size, max(MIN_BATCH, int(size * sample_rate)))
        return int(min(largest, max(MIN_BATCH, n_rows // steps)))

    def training_share(self, candidates: int) -> float:
        """The share of `candidates` rows to train on: all, or `max_train_rows` of them.

        A uniform share of the normal-looking rows: keeping the outliers whole would shift
        the training mix towards them and teach the network to reconstruct what it should
        find unusual. The sample keeps the whole data's optimiser steps (`batch_size`), and
        so the validation loss: on the 5,000-account streaming log a 24% sample in
        batches of 245 reached a lower one than all 1.09M rows in batches of 1,024, where an
        18% sample in batches of 1,024 (a fifth of the steps) fell short (BENCHMARKS.md)."""
        budget = self.config.max_train_rows
        return 1.0 if budget is None or candidates <= budget else budget / candidates

    def fit(
        self,
        train: np.ndarray,
        validation: np.ndarray,
        on_epoch: EpochCallback | None = None,
        sample_rate: float = 1.0,
    ) -> Autoencoder:
        """Minimise reconstruction loss; keep the weights of the best validation epoch.

        `train` and `validation` are in the feature stage's units; the input scaling is
        fitted on `train` first. `sample_rate`: the share of the candidate rows `train` and
        `validation` hold, for the record (`sample_rows` draws them)."""
        torch.manual_seed(self.seed)
        torch.set_num_threads(self.config.threads)
        torch.use_deterministic_algorithms(True)
        n_inputs = train.shape[1]
        network = _Network(n_inputs, self.config)
        optimiser = torch.optim.Adam(
            network.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        self.fit_scaling(train)
        train_tensor = torch.from_numpy(self.scale_inputs(train))
        validation_tensor = torch.from_numpy(self.scale_inputs(validation))
        batch_size = self.batch_size(len(train_tensor), sample_rate)
        generator = torch.Generator().manual_seed(self.seed)
        best_loss, best_state, stale = float("inf"), None, 0
        self.history_ = []
        for epoch in range(1, self.config.max_epochs + 1):
            network.train()
            order = torch.randperm(len(train_tensor), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = train_tensor[order[start : start + batch_size]]
                reconstruction, _ = network(batch)
                loss = self._loss(reconstruction, batch).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            train_loss = total / len(train_tensor)
            network.eval()
            validation_loss = float(self._run(network, validation_tensor)[0].mean())
            self.history_.append(
                {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss}
            )
            if on_epoch is not None:
                on_epoch(epoch, train_loss, validation_loss)
            if validation_loss < best_loss - 1e-7:
                best_loss, stale = validation_loss, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                stale += 1
                if stale >= self.config.patience:
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        self.network_, self.n_inputs_, self.sample_rate_ = network, n_inputs, sample_rate
        return self

    def _loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-event error: mean squared (l2) or mean absolute (l1) over the inputs."""
        difference = reconstruction - target
        if self.config.error_metric == "l1":
            return difference.abs().mean(dim=1)
        return (difference**2).mean(dim=1)

    def _scoring_forward(self, network: _Network) -> _Forward:
        """The `_Forward` of `network` (made again for another network)."""
        if self._forward is None or self._forward.network is not network:
            self._forward = _Forward(network)
        return self._forward

    @torch.inference_mode()
    def _run(self, network: _Network, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-event errors and latent codes, in batches to bound memory. The network is in
        eval mode (set after training and on load), run as its `_Forward`: switching the
        mode per call, or the modules' own calls, cost more than a one-row forward pass."""
        forward = self._scoring_forward(network)
        if 0 < len(inputs) <= SCORE_BATCH:  # one batch: no concatenation (a micro-batch)
            reconstruction, latent = forward(inputs)
            return self._loss(reconstruction, inputs), latent
        errors, latents = [], []
        for start in range(0, len(inputs), SCORE_BATCH):
            batch = inputs[start : start + SCORE_BATCH]
            reconstruction, latent = forward(batch)
            errors.append(self._loss(reconstruction, batch))
            latents.append(latent)
        if not errors:
            return torch.zeros(0), torch.zeros((0, self.config.latent_dim))
        return torch.cat(errors), torch.cat(latents)

    def transform(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruction error (n,) and latent embedding (n, latent_dim) in one pass.

        Scaled in chunks of `SCORE_BATCH` rows (the batches `_run` takes anyway): the float64
        copy of a million events' inputs at once was the run's peak memory."""
        network = self._fitted()
        parts = [
            self._run(
                network, torch.from_numpy(self.scale_inputs(inputs[start : start + SCORE_BATCH]))
            )
            for start in range(0, len(inputs), SCORE_BATCH)
        ]
        if not parts:
            return np.zeros(0), np.zeros((0, self.config.latent_dim), np.float32)
        if len(parts) == 1:  # a micro-batch: no copies by torch.cat
            errors, latents = parts[0]
        else:
            errors, latents = (torch.cat([part[at] for part in parts]) for at in (0, 1))
        return errors.double().numpy(), latents.numpy()

    @torch.inference_mode()
    def input_errors(self, inputs: np.ndarray) -> np.ndarray:
        """Squared reconstruction error of every input of every event, (n, d), in the
        network's units: which inputs it could not reproduce, for the reasons of an alert."""
        forward = self._scoring_forward(self._fitted())
        tensor = torch.from_numpy(self.scale_inputs(inputs))
        parts = []
        for start in range(0, len(tensor), SCORE_BATCH):
            batch = tensor[start : start + SCORE_BATCH]
            parts.append(((forward(batch)[0] - batch) ** 2).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, tensor.shape[1]), np.float32)

    def reconstruction_error(self, inputs: np.ndarray) -> np.ndarray:
        return self.transform(inputs)[0]

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        return self.transform(inputs)[1]

    def _fitted(self) -> _Network:
        self.check_fitted()
        assert self.network_ is not None
        return self.network_

    @property
    def is_fitted(self) -> bool:
        return self.network_ is not None and self.centre_ is not None

    def to_files(self) -> dict[str, bytes]:
        weights, meta = self.to_bytes()
        return {"autoencoder.safetensors": weights, "autoencoder.json": meta}

    def from_files(self, files: Mapping[str, bytes]) -> Autoencoder:
        if "autoencoder.safetensors" not in files:
            raise ArtifactError("saved stage lacks autoencoder.safetensors")
        metadata = read_json_file(files, "autoencoder.json")
        if not isinstance(metadata, dict):
            raise ArtifactError("autoencoder.json: expected a JSON object")
        loaded = self.from_bytes(self.config, files["autoencoder.safetensors"], metadata)
        vars(self).update(vars(loaded))
        return self

    # -- persistence --------------------------------------------------------------------------

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(safetensors weights, JSON metadata)."""
        network = self._fitted()
        weights = save_safetensors({k: v.contiguous() for k, v in network.state_dict().items()})
        assert self.centre_ is not None and self.spread_ is not None
        meta = {
            "n_inputs": self.n_inputs_,
            "seed": self.seed,
            "history": self.history_,
            "input_centre": self.centre_.tolist(),
            "input_spread": self.spread_.tolist(),
            "input_clip": self.clip_,
            "sample_rate": self.sample_rate_,
        }
        return weights, json.dumps(meta).encode()

    @classmethod
    def from_bytes(
        cls, config: AutoencoderConfig, weights: bytes, metadata: dict[str, Any]
    ) -> Autoencoder:
        try:
            n_inputs = int(metadata["n_inputs"])
            seed = int(metadata["seed"])
            history = [
                {
                    "epoch": int(entry["epoch"]),
                    "train_loss": float(entry["train_loss"]),
                    "validation_loss": float(entry["validation_loss"]),
                }
                for entry in metadata["history"]
            ]
            if not history:
                raise ValueError("no training history")
            centre = np.asarray(metadata["input_centre"], dtype=np.float64)
            spread = np.asarray(metadata["input_spread"], dtype=np.float64)
            clip = metadata["input_clip"]
            clip = None if clip is None else float(clip)
            if centre.shape != (n_inputs,) or spread.shape != (n_inputs,):
                raise ValueError(f"input scaling does not have n_inputs = {n_inputs} values")
            if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(spread))):
                raise ValueError("input scaling is not finite")
            if np.any(spread <= 0) or (clip is not None and not clip > 0):
                raise ValueError("input spread and clip must be positive")
            sample_rate = float(metadata.get("sample_rate", 1.0))  # absent before sampling
            if not 0 < sample_rate <= 1:
                raise ValueError(f"sample_rate {sample_rate} is not in (0, 1]")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"autoencoder.json: malformed ({exc})") from None
        try:
            state = load_safetensors(weights)
            first = state.get("encoder.0.weight")
            # checked before the network is built: a forged n_inputs must not allocate it
            if first is None or first.ndim != 2 or first.shape[1] != n_inputs:
                raise ValueError(f"the first layer does not take n_inputs = {n_inputs} inputs")
            network = _Network(n_inputs, config)
            network.load_state_dict(state)
        except (RuntimeError, ValueError, SafetensorError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(
                f"autoencoder.safetensors: cannot load weights ({first_line})"
            ) from None
        network.eval()
        model = cls(config, seed=seed)
        model.network_, model.n_inputs_, model.history_ = network, n_inputs, history
        model.centre_, model.spread_, model.clip_ = centre, spread, clip
        model.sample_rate_ = sample_rate
        return model


def sample_rows(candidates: np.ndarray, rate: float, seed: list[int]) -> np.ndarray:
    """Positions of a seeded share `rate` of the rows where `candidates` (a mask) is true, in
    row order; every candidate at rate 1."""
    if rate >= 1.0:
        return np.flatnonzero(candidates)
    drawn = np.random.default_rng(seed).random(len(candidates)) < rate
    return np.flatnonzero(candidates & drawn)
