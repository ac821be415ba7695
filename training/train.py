"""Training: losses, the cached-feature fast path, early stopping, held-out scores and checkpointing."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from serving.models import DynamicCNN, ModelOutput, build_model
from serving.models.build import HintTensors
from serving.models.heads import DYNAMIC_HEADS, ROUTE_THRESHOLD, coherent_subcategories
from serving.ontology import Ontology
from training.data.benchmark import BenchmarkConfig, Split, load_benchmark
from training.metrics import level_metrics

#: Report level name → :class:`ModelOutput` field.
LEVELS = {"category": "categories", "subcategory": "subcategories", "attribute": "attributes"}

#: Called after each optimiser step with ``(step, loss)`` and after each feature batch with ``(batch, None)``:
#: progress reports, and cancellation (an exception raised by the hook stops training at that step boundary).
StepHook = Callable[[int, float | None], None]


def compute_loss(output: ModelOutput, targets: dict[str, Tensor], *, multi: bool, kind: str = "bce",
                 reduction: str = "sum") -> Tensor:
    """Sum of the three levels' losses.

    Single-class categories use cross-entropy on class indices; every multi-label level uses
    BCE-with-logits (``kind="bce"``) or the paper's MSE on sigmoid scores (``kind="mse"``), summed over
    classes (``reduction="sum"``) or averaged over them (``"mean"``), and averaged over samples.
    Deactivated logits are finite (-30), so they add a constant and no gradient.
    """
    if kind not in ("bce", "mse"):
        raise ValueError(f"loss kind must be 'bce' or 'mse', got {kind!r}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    # Summed over classes, averaged over samples: a mean over ~40 mostly-negative outputs divides each
    # positive's gradient by the class count, and SGD then learns little beyond the label prior.
    # ``known`` (optional, same shape) zeroes the loss of targets nobody labelled.
    def multilabel(logits: Tensor, target: Tensor, known: Tensor | None = None) -> Tensor:
        if kind == "mse":
            each = F.mse_loss(torch.sigmoid(logits), target, reduction="none")
        else:
            each = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        total = (each * known).sum() if known is not None else each.sum()
        return total / (len(target) if reduction == "sum" else target.numel())

    if multi:
        category_loss = multilabel(output.categories, targets["categories"])
    else:
        category_loss = F.cross_entropy(output.categories, targets["categories"])
    return (category_loss + multilabel(output.subcategories, targets["subcategories"], targets.get("subcategories_known"))
            + multilabel(output.attributes, targets["attributes"], targets.get("attributes_known")))


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings (SGD with momentum as in the paper, cosine-free for brevity)."""

    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    patience: int = 3
    seed: int = 0
    loss: str = "bce"
    #: ``"sum"`` over classes for the heads; the backbone's pretraining uses ``"mean"`` (see ``frozen_features``).
    multilabel_reduction: str = "sum"
    #: Probability of zeroing a training sample's hints, so the hint-reading heads also learn the no-hint
    #: fallback. The Table II run picks it per head on validation (``training.evaluate``); this default
    #: is what it picked for the served head (late fusion) in both scenarios.
    hint_dropout: float = 0.0


@dataclass(frozen=True)
class Batchable:
    """Inputs (images uint8 or cached features), mined hints and targets of one split, as tensors."""

    inputs: Tensor
    hints: HintTensors
    targets: dict[str, Tensor]

    @classmethod
    def from_split(cls, split: Split, *, multi: bool, inputs: Tensor | None = None, hints: bool = True) -> Batchable:
        tensors = HintTensors(*(torch.from_numpy(getattr(split, f"hint_{level}")) for level in LEVELS.values()))
        if not hints:  # "hints removed at test time": the model must fall back on its own prediction
            tensors = silent(tensors)
        return cls(torch.from_numpy(split.images) if inputs is None else inputs, tensors, split.targets(multi=multi))

    def batches(self, size: int, generator: torch.Generator | None = None):
        """``(inputs, hints, targets)`` per batch, shuffled when a ``generator`` is given."""
        order = torch.randperm(len(self.inputs), generator=generator) if generator else torch.arange(len(self.inputs))
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            yield self.inputs[idx], HintTensors(*(t[idx] for t in self.hints)), {k: v[idx] for k, v in self.targets.items()}


def silent(hints: HintTensors) -> HintTensors:
    """The same hints with every score zeroed (text that says nothing)."""
    return HintTensors(*(torch.zeros_like(t) for t in hints))


def drop_hints(hints: HintTensors, p: float, generator: torch.Generator) -> HintTensors:
    """Zero all hint rows of each sample with probability ``p`` (text that mentions nothing).

    Training only on hinted samples teaches the dynamic heads to lean on the alpha boost; silent samples
    make them route through their own predicted category instead, as they must at test time.
    """
    if p <= 0:
        return hints
    keep = (torch.rand(len(hints.categories), 1, generator=generator) >= p).to(hints.categories.dtype)
    return HintTensors(*(t * keep for t in hints))


def _forward(model: DynamicCNN, x: Tensor, hints: HintTensors, *, features: bool) -> ModelOutput:
    if features:
        return model.classify(x, hints.categories, hints.attributes, hints.subcategories)
    return model(model.preprocess(x), hints.categories, hints.attributes, hints.subcategories)


def predict(model: DynamicCNN, data: Batchable, *, features: bool, device: str = "cpu", batch_size: int = 256) -> ModelOutput:
    """Concatenated outputs of ``model`` over ``data`` in eval mode."""
    model.eval()
    outs = []
    with torch.no_grad(), _autocast(device):
        for x, hints, _ in data.batches(batch_size):
            outs.append(_forward(model, x.to(device), _to(hints, device), features=features))
    return ModelOutput(*(torch.cat([getattr(o, f).float().cpu() for o in outs]) for f in ModelOutput._fields))


def evaluate_model(model: DynamicCNN, split: Split, *, features: torch.Tensor | None, hints: bool, device: str = "cpu") -> dict[str, dict]:
    """Per level, the paper's metrics of ``model`` on ``split`` (mined hints or none).

    Single-class scores are ranked as served: category probabilities (softmax), sub-categories made
    coherent with the top category (:func:`coherent_subcategories`).
    """
    multi = model.config.multi
    data = Batchable.from_split(split, multi=multi, inputs=features, hints=hints)
    out = predict(model, data, features=features is not None, device=device)
    scores = {"categories": torch.sigmoid(out.categories) if multi else torch.softmax(out.categories, 1),
              "subcategories": out.subcategories, "attributes": out.attributes}
    if not multi:
        scores["subcategories"] = coherent_subcategories(out.categories, out.subcategories, model.head.subcategory_parent.cpu())
    targets = {"categories": torch.from_numpy(split.categories), "subcategories": torch.from_numpy(split.subcategories),
               "attributes": torch.from_numpy(split.attributes)}
    return {level: level_metrics(scores[field], targets[field]) for level, field in LEVELS.items()}


def _to(hints: HintTensors, device: str) -> HintTensors:
    return HintTensors(*(t.to(device) for t in hints))


def _autocast(device: str):
    # Mixed precision only where it pays off (CUDA); CPU runs stay in float32.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def extract_features(model: DynamicCNN, images: Tensor, *, device: str = "cpu", batch_size: int = 256,
                     on_step: StepHook | None = None) -> Tensor:
    """Frozen-backbone features ``[N, F]`` of uint8 images: the cached fast path's input."""
    model.eval()
    chunks = []
    with torch.no_grad(), _autocast(device):
        for start in tqdm(range(0, len(images), batch_size), desc="features", leave=False, disable=None):
            chunks.append(model.backbone(model.preprocess(images[start : start + batch_size].to(device))).float().cpu())
            if on_step is not None:
                on_step(len(chunks), None)
    return torch.cat(chunks)


def _val_loss(model: DynamicCNN, val: Batchable, config: FitConfig, *, features: bool, device: str) -> float:
    """Validation loss with hints, mixed with the no-hint loss in the proportion training drops hints.

    Stopping on the hinted loss alone picks the epoch where the alpha boost fits best, long before the
    no-hint fallback has converged.
    """
    multi = model.config.multi

    def loss(data: Batchable) -> float:
        out = predict(model, data, features=features, device=device)
        return float(compute_loss(out, data.targets, multi=multi, kind=config.loss, reduction=config.multilabel_reduction))

    hinted = loss(val)
    if config.hint_dropout <= 0 or model.config.head == "base":  # Base ignores hints: same loss twice
        return hinted
    quiet = dataclasses.replace(val, hints=silent(val.hints))
    return (1 - config.hint_dropout) * hinted + config.hint_dropout * loss(quiet)


def fit(model: DynamicCNN, train: Batchable, val: Batchable, config: FitConfig, *, features: bool, device: str = "cpu",
        on_step: StepHook | None = None) -> dict:
    """Train with early stopping on validation loss; restores the best weights.

    With ``features=True`` the inputs are cached backbone features and only the head trains.
    """
    if not 0 <= config.hint_dropout <= 1:
        raise ValueError(f"hint_dropout must be in [0, 1], got {config.hint_dropout}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # Separate stream: the batch order stays the same whatever the dropout rate.
    hint_generator = torch.Generator().manual_seed(config.seed + 1)
    params = [p for p in (model.head if features else model).parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    multi = model.config.multi
    best, best_state, bad, history, step = float("inf"), None, 0, [], 0
    for epoch in range(config.epochs):
        model.train()
        if features:
            model.backbone.eval()  # frozen: keep BatchNorm statistics as they are
        total = 0.0
        for x, hints, y in tqdm(list(train.batches(config.batch_size, generator)), desc=f"epoch {epoch}", leave=False, disable=None):
            hints = drop_hints(hints, config.hint_dropout, hint_generator)
            with _autocast(device):
                out = _forward(model, x.to(device), _to(hints, device), features=features)
                loss = compute_loss(out, {k: v.to(device) for k, v in y.items()}, multi=multi, kind=config.loss,
                                    reduction=config.multilabel_reduction)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            total += value * len(x)
            step += 1
            if on_step is not None:
                on_step(step, value)
        val_loss = _val_loss(model, val, config, features=features, device=device)
        history.append({"epoch": epoch, "train_loss": total / len(train.inputs), "val_loss": val_loss})
        if val_loss < best - 1e-4:
            best, bad = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"best_val_loss": best, "epochs_run": len(history), "history": history}


def frozen_features(
    backbone: str, ontology: Ontology, splits: dict[str, Split], *, multi: bool, pretrain: FitConfig | None, device: str = "cpu",
    on_step: StepHook | None = None,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """The paper's freeze-then-fine-tune, cached: a backbone and its features for every split.

    ``pretrain`` first trains the backbone end to end with a Base head (for backbones without
    pretrained weights, e.g. ``tiny``); ``None`` keeps its weights (ImageNet for EfficientNet-Lite0).
    Pretraining averages the multi-label losses over classes, which lets the category level dominate:
    class-summed losses there gave the tiny backbone clearly worse category features (P@1 0.63 vs 0.73).
    """
    model = build_model(backbone=backbone, head="base", ontology=ontology, multi=multi).to(device)
    if pretrain is not None:
        train, val = (Batchable.from_split(splits[s], multi=multi) for s in ("train", "val"))
        fit(model, train, val, dataclasses.replace(pretrain, multilabel_reduction="mean"), features=False, device=device,
            on_step=on_step)
    feats = {name: extract_features(model, torch.from_numpy(split.images), device=device, on_step=on_step)
             for name, split in splits.items()}
    return model.backbone, feats


def train_head(
    head: str, backbone: nn.Module, feats: dict[str, Tensor], splits: dict[str, Split], *, name: str,
    ontology: Ontology, multi: bool, config: FitConfig, device: str = "cpu", on_step: StepHook | None = None,
    base: DynamicCNN | None = None, **model_kw,
) -> tuple[DynamicCNN, dict]:
    """Train ``head`` on cached features of a frozen ``backbone`` (shared, not copied).

    A dynamic head continues a trained Base (:meth:`~serving.models.heads._Head.start_from`): ``base``,
    or one trained here first with the same settings.
    """
    if head in DYNAMIC_HEADS and base is None:
        base, _ = train_head("base", backbone, feats, splits, name=name, ontology=ontology, multi=multi,
                             config=config, device=device, on_step=on_step)
    torch.manual_seed(config.seed)
    model = build_model(backbone=name, head=head, ontology=ontology, multi=multi, weights="random", **model_kw)
    model.backbone = backbone  # share the frozen, already-trained trunk
    if head in DYNAMIC_HEADS:
        model.head.start_from(base.head)
    train, val = (Batchable.from_split(splits[s], multi=multi, inputs=feats[s]) for s in ("train", "val"))
    return model, fit(model.to(device), train, val, config, features=True, device=device, on_step=on_step)


@dataclass(frozen=True)
class Trained:
    """A model trained on the benchmark, its fit history and its test metrics with mined hints and with none."""

    model: DynamicCNN
    history: dict
    metrics: dict[str, dict]


def train_on_benchmark(bench: BenchmarkConfig, *, backbone: str, head: str, ontology: Ontology, config: FitConfig,
                       pretrain: FitConfig | None, cache_dir: Path, device: str = "cpu",
                       route_threshold: float = ROUTE_THRESHOLD) -> Trained:
    """Load (or build and cache) the benchmark, freeze ``backbone`` on it (after ``pretrain``), train ``head`` on
    its features and evaluate on the test split."""
    splits = load_benchmark(ontology, bench, cache_dir=cache_dir)
    trunk, feats = frozen_features(backbone, ontology, splits, multi=bench.multi, pretrain=pretrain, device=device)
    model, history = train_head(head, trunk, feats, splits, name=backbone, ontology=ontology, multi=bench.multi,
                                config=config, device=device, route_threshold=route_threshold)
    metrics = {hints: evaluate_model(model, splits["test"], features=feats["test"], hints=hints == "mined",
                                     device=device) for hints in ("mined", "none")}
    return Trained(model, history, metrics)


def main(argv: list[str] | None = None) -> int:
    """``stylestream train``: train one model on the benchmark and write a checkpoint directory.

    (``stylestream train --data MANIFEST`` trains on real labelled photos instead: :mod:`training.real.cli`.)

    The backbone is frozen (after ``--pretrain-epochs`` end-to-end epochs, if any) and the head trains
    on cached features.
    """
    from serving.checkpoint import save_checkpoint
    from serving.ontology import load_ontology
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it
    from training.plots import plot_training_curves

    parser = argparse.ArgumentParser(**parser_options("stylestream train", main.__doc__))
    parser.add_argument("--scenario", choices=["single", "multi"], default="single")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--head", default="dynamic_layers")
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=0, help="end-to-end epochs before freezing")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/benchmark"))
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hint-dropout", type=float, default=FitConfig.hint_dropout,
                        help="probability of training a sample without its hints")
    parser.add_argument("--route-threshold", type=float, default=ROUTE_THRESHOLD,
                        help="image probability at which a category's range opens besides the hinted ones")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    bench = BenchmarkConfig(multi=args.scenario == "multi", n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    pretrain = FitConfig(epochs=args.pretrain_epochs, seed=args.seed) if args.pretrain_epochs else None
    fit_config = FitConfig(epochs=args.epochs, seed=args.seed, hint_dropout=args.hint_dropout)
    trained = train_on_benchmark(bench, backbone=args.backbone, head=args.head, ontology=load_ontology(), config=fit_config,
                                 pretrain=pretrain, cache_dir=args.cache_dir, device=args.device,
                                 route_threshold=args.route_threshold)
    config = {"benchmark": dataclasses.asdict(bench), "fit": dataclasses.asdict(fit_config), "history": trained.history}
    save_checkpoint(trained.model, args.out, config=config, metrics=trained.metrics)
    plot_training_curves(trained.history["history"], args.out / "training_curves.png",
                         title=f"{args.scenario} · {args.backbone} · {args.head}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
