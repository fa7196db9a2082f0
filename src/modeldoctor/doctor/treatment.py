"""Treatment (Eq. 7): the loss that fine-tunes a trained classifier with the space- and channel-wise constraints.

``L_all = L_orig + λ_sp Σ_{r∈S_sp} L_sp^r + λ_ch Σ_{r∈S_ch} L_ch^r`` (optionally ``+ λ_ig L_ig``, the masked
input-gradient peer of Ross et al., and ``+ λ_cf L_cf``, cross-entropy on counterfactual backgrounds:
:mod:`modeldoctor.doctor.counterfactual`).  The channel-wise terms come from the batch's own training forward plus J
noisy replays of the tail after each layer (:class:`modeldoctor.core.replay.NoiseReplay`, tail in eval mode);
the masked terms from a separate eval-mode pass over the batch's annotated rows only.  The noise range δ is
relative: ``σ ~ U(−δ·rms(m^r), δ·rms(m^r))``.

What makes the space-wise term reach the layers that compute the background features (README, protocol):

* ``form="activation"`` penalises the background share of ``Σ_j |Σ_k m_k ∂ŷ/∂(m_k+σ^j)|``, which depends on
  m^r itself; the paper's |∂ŷ/∂m^r| does not depend on any weight before r in a ReLU network.
* the default space-wise layer is the deepest conv whose receptive field is at most a quarter of the input:
  deeper cells all see background (``receptive_field=True`` makes I_bg account for that instead).
* ``smooth_beta`` gives the constraint pass a softplus_β backward (forward unchanged).
* ``lam_* = "auto"`` sets each λ once so that the term equals ``lam_fraction`` × the cross-entropy of the
  annotated images at the start, so a confident model's ≈0 cross-entropy cannot drown or be drowned by it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.analyses.input_gradients import log_prob_input_gradient, squared_gradient_norm
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import conv_layer_names, default_layer, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.receptive import receptive_field, receptive_fields
from modeldoctor.core.replay import ForwardState, NoiseReplay
from modeldoctor.core.surrogate import smooth_backward, surrogate_relus, twice_differentiable
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import background_mask, expand_mask, receptive_background
from modeldoctor.data.swap import PLACES
from modeldoctor.doctor.annotation import MaskBank
from modeldoctor.doctor.constraints import channel_constraint, competitor_classes, first_classes, spatial_constraint
from modeldoctor.doctor.counterfactual import Composer

CONSTRAINTS = ("space", "channel", "input-gradient", "counterfactual")
MASKED = ("space", "input-gradient", "counterfactual")  # the terms that need object masks
FIELD_SHARE = 0.25  # default space-wise layer: the deepest conv whose receptive field ≤ this share of the input
Lambda = float | Literal["auto"]


@dataclass
class TreatConfig:
    """What to constrain and how.  Defaults frozen by the protocol in ``docs/protocols.md`` (section treat): chosen
    on held-out background swaps (and validation) of development seeds 100–101, never on test."""

    constraints: tuple[str, ...] = ("counterfactual",)
    space_layers: list[str] | None = None  # default: deepest conv with receptive field ≤ ¼ of the input
    channel_layers: list[str] | None = None  # default: the last conv layer
    lam_space: Lambda = "auto"
    lam_channel: Lambda = "auto"
    lam_input_gradient: Lambda = "auto"
    lam_fraction: float = 10.0  # "auto": each term = this × the annotated images' cross-entropy at the start
    lam_counterfactual: float = 3.0  # weight of the composites' cross-entropy (L_orig's is 1)
    composites: int = 64  # counterfactual composites appended to every batch
    # Where a pasted object sits: where it was in its own image ("own") or centred where the background image's own
    # object was ("donor"); ``paste_at`` for the composites that train (the counterfactual term, the re-fit head),
    # ``swap_paste_at`` for the swap meter's; "auto": "donor" when the shortcut check finds the model reading its
    # background, else "own" (resolved by ``api.treat``; where nothing resolves it, as in a bare ``TreatmentLoss``,
    # it means "own": :func:`paste_place`).  "donor" for both passed its development rule but, on report
    # seeds, wrecked a clean model whose objects carry an on-object cue (tint-mnist); "auto" is the guard, checked on
    # development seeds (benchmarks/paste_place.py, paste_guard.py).
    paste_at: str = "auto"
    swap_paste_at: str = "auto"
    term_cap: float | None = None  # per step, λ·term ≤ term_cap × the batch's cross-entropy (penalty terms only)
    noise_draws: int = 4  # J
    delta: float = 0.1  # relative noise range: δ = delta · rms(m^r)
    form: str = "activation"  # space-wise: "activation", "share" or "paper"; channel-wise: share unless "paper"
    first: str = "label"  # class of the first term: ground truth or "pred"
    competitor: str = "runner_up"  # or "wrong_top1"
    competitor_kernels: bool = False  # restrict Eq. 5's second term to the competitor's relevant kernels
    expansion: int = 3  # object mask growth in input pixels before computing I_bg
    receptive_field: bool = False  # I_bg: background where ≥ half the cell's receptive field is background
    smooth_beta: float | None = None  # softplus_β backward in the constraint pass (None: plain ReLU backward)
    normalise: str = "annotated"  # masked terms averaged over annotated images ("batch": over all rows)
    mix_annotated: int = 16  # annotated images appended to every batch (treated and control alike)
    holdout_annotated: float = 0.25  # share of annotated images kept out of training for the swap test
    select: str = "swap"  # checkpoint by background-swap accuracy, validation accuracy ("val") or "last"
    # A fine-tune with a fallback (doctor/search.FALLBACKS) that after epoch e of E trails the re-fit head on select
    # swaps by more than this × (E − e) / E stops there and its fallback runs (None: every fine-tune runs in full).
    early_stop_margin: float | None = 0.45  # development seeds only (benchmarks/early_stop.py)

    def __post_init__(self) -> None:
        self.constraints = tuple(self.constraints)
        unknown = set(self.constraints) - set(CONSTRAINTS)
        if unknown:
            raise UserError(f"unknown constraint(s) {sorted(unknown)}; choose from {', '.join(CONSTRAINTS)}")
        if self.lam_counterfactual < 0 or self.composites < 0 or (self.term_cap is not None and self.term_cap <= 0):
            raise UserError("lam_counterfactual and composites must be >= 0 and term_cap > 0")
        for name in ("lam_space", "lam_channel", "lam_input_gradient"):
            value = getattr(self, name)
            if value != "auto" and not (isinstance(value, (int, float)) and value >= 0):
                raise UserError(f"{name} must be 'auto' or a number >= 0, got {value!r}")
        if self.select not in ("swap", "val", "last"):
            raise UserError(f"unknown checkpoint selection {self.select!r}; choose swap, val or last")
        if self.early_stop_margin is not None and not self.early_stop_margin >= 0:
            raise UserError(f"early_stop_margin must be None or >= 0, got {self.early_stop_margin}")
        for place in (self.paste_at, self.swap_paste_at):
            if place not in (*PLACES, "auto"):
                raise UserError(f"unknown paste place {place!r}; choose {', '.join(PLACES)} or auto")
        if not 0 <= self.holdout_annotated < 1:
            raise UserError(f"holdout_annotated must be in [0, 1), got {self.holdout_annotated}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[str], list[str]]:
    """(space-wise, channel-wise) default layers: the deepest conv whose receptive field is at most a quarter of
    the input side (so a cell can be told apart as object or background), and the last conv (supplement A)."""
    convs = conv_layer_names(model)
    if not convs:
        raise UserError("the model has no Conv2d layer to constrain; name layers with --space-layers/--channel-layers")
    limit = FIELD_SHARE * max(input_shape[1:])
    fields = receptive_fields(model, convs, input_shape, stop_above=limit)
    small = [name for name, field in fields.items() if field <= limit]
    return (small[-1:] or convs[:1]), [default_layer(model, input_shape)]


def paste_place(place: str) -> str:
    """A configured paste place as composites use it: an ``"auto"`` that no shortcut check resolved is ``"own"``."""
    return "own" if place == "auto" else place


def control_config(cfg: TreatConfig) -> TreatConfig:
    """The matched control: the same fine-tune (batches, annotated-image mixing, optimiser) without constraints."""
    return TreatConfig(**{**cfg.to_dict(), "constraints": ()})


def _relative_delta(feature: torch.Tensor, delta: float) -> float:
    return float(delta * feature.detach().pow(2).mean().sqrt().clamp_min(1e-12))


class TreatmentLoss:
    """Eq. 7 as a :func:`modeldoctor.training.fit` loss, built once per model (the replay shares its modules).

    ``relevant[layer]``: (num_classes, K) bool relevant kernels from the diagnosis (channel-wise); ``bank``: masks
    of the annotated images of ``split`` (the training split); ``mixer`` appends annotated images to each batch;
    ``seed`` draws the counterfactual composites.  With ``smooth_beta`` the model's
    ReLUs are swapped for surrogates until :meth:`close` (or the end of a ``with`` block).  ``log`` accumulates
    the unweighted terms; ``lambdas`` holds the λ in use (``"auto"`` ones after :meth:`calibrate`).
    """

    def __init__(self, model: nn.Module, cfg: TreatConfig, input_shape: tuple[int, int, int],
                 relevant: dict[str, torch.Tensor] | None = None, bank: MaskBank | None = None,
                 mixer: Any = None, split: ImageSplit | None = None, seed: int = 0) -> None:
        self.model, self.cfg, self.bank, self.mixer, self.seed = model, cfg, bank, mixer, seed
        needs_default = ("space" in cfg.constraints and not cfg.space_layers) or (
            "channel" in cfg.constraints and not cfg.channel_layers)
        space_default, channel_default = default_layers(model, input_shape) if needs_default else ([], [])
        self.space_layers = (cfg.space_layers or space_default) if "space" in cfg.constraints else []
        self.channel_layers = (cfg.channel_layers or channel_default) if "channel" in cfg.constraints else []
        self.use_ig = "input-gradient" in cfg.constraints
        if set(MASKED) & set(cfg.constraints) and (bank is None or not bank.pool):
            raise UserError(f"the {'/'.join(sorted(set(MASKED) & set(cfg.constraints)))} term needs object masks; "
                            "pass --masks builtin|DIR or --boxes FILE")
        self.composer: Composer | None = None
        if "counterfactual" in cfg.constraints:
            if split is None:
                raise UserError("the counterfactual term needs the training split its masks belong to")
            assert bank is not None
            self.composer = Composer(split, bank, place=paste_place(cfg.paste_at))
        missing = [n for n in self.channel_layers if relevant is None or n not in relevant]
        if missing:
            raise UserError(f"the diagnosis has no relevant kernels for {missing}; diagnose those layers first")
        self.relevant = relevant or {}
        self.fields = {n: receptive_field(model, n, input_shape) for n in self.space_layers} if cfg.receptive_field else {}
        self.lambdas: dict[str, float | None] = {
            key: None if value == "auto" else float(value)
            for key, value in (("space", cfg.lam_space), ("channel", cfg.lam_channel),
                               ("input-gradient", cfg.lam_input_gradient)) if key in cfg.constraints}
        if self.composer is not None:
            self.lambdas["counterfactual"] = float(cfg.lam_counterfactual)
        self.log: dict[str, float] = {}
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(twice_differentiable(model))
        self.surrogates = self._exit.enter_context(surrogate_relus(model, cfg.smooth_beta)) if cfg.smooth_beta else []
        wanted = set(self.space_layers) | set(self.channel_layers)
        order = conv_layer_names(model)
        layers = [n for n in order if n in wanted] + sorted(wanted - set(order))
        self.replay = NoiseReplay(model, layers) if layers else None
        # The share/paper forms of Eq. 6 on a piecewise-linear tail depend on no weight before r (core/surrogate.py),
        # so the masked pass may run the trunk without a graph: the same gradients without a second trunk backward.
        self.trunk_free = bool(self.space_layers) and cfg.form != "activation" and not self.surrogates and all(
            self.replay is not None and self.replay.piecewise_linear_tail(n) for n in self.space_layers)

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Put the model's own activation modules back (ReLUs swapped by ``smooth_beta``, hard sigmoid / swish)."""
        self._exit.close()

    def __enter__(self) -> TreatmentLoss:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- the terms (unweighted) ------------------------------------------------------------------------
    def _gradients(self, state: ForwardState, layer: str, classes: list[torch.Tensor]) -> list[torch.Tensor]:
        feature = state.features[layer]
        assert self.replay is not None
        return self.replay.gradients(state, layer, classes, noise_draws=self.cfg.noise_draws,
                                     delta=_relative_delta(feature, self.cfg.delta), output="logit",
                                     create_graph=True).grads

    def channel_term(self, state: ForwardState, y: torch.Tensor) -> torch.Tensor:
        """Σ_r L_ch^r (Eq. 5) on a batch whose forward state is ``state``."""
        first = first_classes(state.logits, y, self.cfg.first)
        second, weight = competitor_classes(state.logits, y, first, self.cfg.competitor)
        form: Literal["paper", "share"] = "paper" if self.cfg.form == "paper" else "share"
        total = state.logits.new_zeros(())
        for layer in self.channel_layers:
            g = self._gradients(state, layer, [first, second])
            rel = self.relevant[layer].to(state.logits.device)
            total = total + channel_constraint(g[0], g[1], ~rel[first], weight,
                                               rel[second] if self.cfg.competitor_kernels else None, form)
        return total

    def _background(self, masks: torch.Tensor, layer: str, hw: tuple[int, int]) -> torch.Tensor:
        if layer in self.fields:
            return receptive_background(masks, hw, self.cfg.expansion, self.fields[layer])
        return background_mask(masks, hw, self.cfg.expansion)

    def space_term(self, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Σ_r L_sp^r (Eq. 6, ``cfg.form``) averaged over these annotated images, in eval mode (the trunk before r
        without a graph where :attr:`trunk_free`)."""
        assert self.replay is not None
        with train_mode(self.model, False), smooth_backward(self.surrogates):
            with torch.no_grad() if self.trunk_free else contextlib.nullcontext():
                state = self.replay.forward(x)
            target = first_classes(state.logits, y, self.cfg.first)
            total = state.logits.new_zeros(())
            for layer in self.space_layers:
                feature = state.features[layer]
                (g,) = self._gradients(state, layer, [target])
                bg = self._background(masks, layer, (feature.shape[-2], feature.shape[-1]))
                total = total + spatial_constraint(g, bg, form=self.cfg.form, features=feature)  # type: ignore[arg-type]
        return total

    def input_gradient_term(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Ross et al.'s right-reasons term: mean over images of Σ (I_bg · ∂/∂x Σ_k log p̂_k)², in eval mode."""
        with train_mode(self.model, False):
            grad, _ = log_prob_input_gradient(self.model, x)
        background = (~expand_mask(masks, self.cfg.expansion)).unsqueeze(1)
        return squared_gradient_norm(grad, background)

    def masked_terms(self, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {}
        if self.space_layers:
            terms["space"] = self.space_term(x, y, masks)
        if self.use_ig:
            terms["input-gradient"] = self.input_gradient_term(x, masks)
        return terms

    # -- λ ---------------------------------------------------------------------------------------------
    def calibrate(self, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None) -> dict[str, float | None]:
        """Set every ``"auto"`` λ so that λ·term = ``lam_fraction`` × cross-entropy on these images (the annotated
        ones: ``masks``; a channel-wise-only run has none and calibrates on the batch it is given)."""
        if all(v is not None for v in self.lambdas.values()):
            return self.lambdas
        masked = [k for k, v in self.lambdas.items() if v is None and k in MASKED]
        if masked and masks is None:
            raise UserError(f"λ = auto for {masked} needs annotated images in the first batch; set mix_annotated > 0")
        terms = self.masked_terms(x, y, masks) if masks is not None else {}
        with train_mode(self.model, False):
            if self.channel_layers:
                assert self.replay is not None
                state = self.replay.forward(x)
                terms["channel"] = self.channel_term(state, y)
                logits = state.logits
            else:
                logits = select_logits(self.model(x))
            ce = float(F.cross_entropy(logits, y).detach())
        for key, value in self.lambdas.items():
            if value is None:
                term = float(terms[key].detach())
                self.lambdas[key] = self.cfg.lam_fraction * ce / term if term > 1e-12 else 0.0
        return self.lambdas

    # -- the loss --------------------------------------------------------------------------------------
    def _record(self, name: str, value: torch.Tensor) -> None:
        self.log[name] = self.log.get(name, 0.0) + float(value.detach())

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if model is not self.model:
            raise UserError("a TreatmentLoss is bound to the model it was built for; build one per model")
        if self.mixer is not None and idx is not None:
            x, y, idx = self.mixer(x, y, idx)
        masks = annotated = None
        if self.bank is not None and idx is not None:
            masks, annotated = self.bank.lookup(idx.cpu())
            masks, annotated = masks.to(x.device), annotated.to(x.device)
        rows = torch.nonzero(annotated).flatten() if annotated is not None else x.new_zeros(0, dtype=torch.long)
        if any(v is None for v in self.lambdas.values()):
            if masks is not None and len(rows):
                self.calibrate(x[rows], y[rows], masks[rows])
            else:
                self.calibrate(x, y, None)
        n = len(x)
        if self.composer is not None and idx is not None:
            xc, yc = self.composer.batch(self.cfg.composites, idx, self.seed)
            x, y = torch.cat([x, xc.to(x)]), torch.cat([y, yc.to(y.device)])
        state = self.replay.forward(x) if self.channel_layers and self.replay is not None else None
        logits = state.logits if state is not None else select_logits(model(x))
        ce = F.cross_entropy(logits[:n], y[:n])
        terms: dict[str, torch.Tensor] = {}
        if len(x) > n:
            terms["counterfactual"] = F.cross_entropy(logits[n:], y[n:])
        if state is not None:
            terms["channel"] = self.channel_term(state, y)
        if masks is not None and len(rows):
            share = len(rows) / n if self.cfg.normalise == "batch" else 1.0
            terms.update({k: v * share for k, v in self.masked_terms(x[rows], y[rows], masks[rows]).items()})
        loss = ce
        for key, term in terms.items():
            self._record(key, term)
            loss = loss + self._weight(key, term, ce) * term
        return loss, logits[:n]

    def _weight(self, key: str, term: torch.Tensor, ce: torch.Tensor) -> float:
        """λ of ``key``; with ``term_cap`` a penalty's λ shrinks so that λ·term ≤ term_cap × CE on this step (a
        confidence-independent trust region: the penalty can never outweigh the task loss by more)."""
        lam = self.lambdas[key]
        assert lam is not None
        if self.cfg.term_cap is None or key == "counterfactual":
            return lam
        return min(lam, self.cfg.term_cap * float(ce.detach()) / max(float(term.detach()), 1e-12))


def treat_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: TreatmentLoss, x: torch.Tensor,
               y: torch.Tensor, idx: torch.Tensor | None) -> float:
    """One optimisation step of Eq. 7 (what ``fit`` does per batch), returning the loss."""
    model.train()
    loss, _ = loss_fn(model, x, y, idx)
    if not torch.isfinite(loss):
        raise UserError("the treatment loss is not finite; lower --lr or the constraint weights")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


__all__ = ["CONSTRAINTS", "TreatConfig", "TreatmentLoss", "control_config", "default_layers", "treat_step"]
