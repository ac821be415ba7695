"""The packaged default model: served until the trainer publishes one, so labels make sense from the first post.

It lives in ``training/models/data/default/`` in the registry's own layout (``model.safetensors``,
``config.json``, ``metrics.json``, ``SHA256``) and is rebuilt with one command::

    python -m training.default_model

(single-class, tiny backbone, trained on the Table II benchmark's main text condition; the head and its
settings are the ones README's "Which head the product serves" names).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from streamcore.runtime import tune_process


def main(argv: list[str] | None = None) -> int:
    """Train the default model on the benchmark and write it, with its checksum, into the package."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.data.benchmark import BenchmarkConfig
    from training.evaluate import variant_config
    from training.ontology import load_ontology
    from training.registry import CHECKSUM_FILE, DEFAULT_MODEL_DIR, default_entry, weights_checksum
    from training.train import FitConfig, train_on_benchmark

    parser = argparse.ArgumentParser(prog="default_model", description=main.__doc__)
    parser.add_argument("--head", default="fusion", help="the head Table II found best (README)")
    parser.add_argument("--hint-dropout", type=float, default=0.0, help="as selected on validation for that head")
    parser.add_argument("--route-threshold", type=float, default=0.1, help="dynamic heads only")
    parser.add_argument("--n-train", type=int, default=4_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/benchmark"))
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    bench = variant_config(BenchmarkConfig(n_train=args.n_train, n_test=args.n_test, seed=args.seed), "main")
    fit = FitConfig(epochs=args.epochs, seed=args.seed, hint_dropout=args.hint_dropout)
    trained = train_on_benchmark(bench, backbone="tiny", head=args.head, ontology=load_ontology(), config=fit,
                                 pretrain=FitConfig(epochs=args.pretrain_epochs, seed=args.seed),
                                 cache_dir=args.cache_dir, route_threshold=args.route_threshold)
    model, metrics = trained.model, trained.metrics
    command = " ".join(["python -m training.default_model", *(argv if argv is not None else sys.argv[1:])])
    config = {"command": command, "benchmark": dataclasses.asdict(bench), "fit": dataclasses.asdict(fit),
              "epochs_run": trained.history["epochs_run"]}
    shutil.rmtree(args.out, ignore_errors=True)
    save_checkpoint(model, args.out, config=config, metrics=metrics)
    (args.out / CHECKSUM_FILE).write_text(weights_checksum(args.out) + "\n")
    print(f"{default_entry(args.out).version}: attribute P@3 mined {metrics['mined']['attribute']['P@3']:.3f}, "
          f"category P@1 {metrics['mined']['category']['P@1']:.3f}")
    return 0


if __name__ == "__main__":
    tune_process()  # as every `stylestream` command does; torch is not loaded yet (nothing above imports it)
    raise SystemExit(main())
