#!/usr/bin/env python3
"""glowflow (from Python) against zuko's RealNVP and NSF and nflows' RealNVP on real tables:
test NLL, wall time of the fit, peak memory. Same split, standardisation, steps, batch, Adam
learning rate and model size for every library.

    bench/.venv/bin/python bench/python/tables.py                 # every table, seeds 0 1 2
    bench/.venv/bin/python bench/python/tables.py --tables sp500 --seeds 0

Needs a Python with glowflow (pip install ./python), torch, zuko, nflows and pandas
(bench/python/README.md), and the tables (bench/tables/fetch.sh; galaxy and cities with
PYTHON=bench/.venv/bin/python).

Protocol, per table and seed:
  * split: perm = numpy.random.default_rng(seed).permutation(n); the last round(0.2 n) rows of
    perm are the test rows, the rest the training rows.
  * standardisation: the training rows' mean and population std (float64). PyTorch models see
    standardised float32 rows; glowflow standardises inside its model (float64). Every NLL is
    in the data's own units, nats per row: nll_x = nll_z + sum(log std).
  * models, K flow steps with coupling networks of two hidden layers of width W:
      glowflow  VectorFlow(d, flow_steps=K, net_width=W, net_depth=2) (Glow: ActNorm, LU 1x1,
                tanh affine coupling); "glowflow-ema" the same fit with ema_decay=0.99 (the
                fitted model holds an exponential moving average of the weights)
      glowflow  "glowflow-spline" (and "-spline-ema"): the same with coupling="spline"
                (rational-quadratic spline couplings, 8 bins on [-5, 5]: RQ-NSF (C), each
                followed by its conditional affine stage, spline_affine=True)
      zuko      flows.RealNVP(d, transforms=K, hidden_features=(W, W))
      zuko      flows.NSF(d, transforms=K, hidden_features=(W, W)) (8 bins, autoregressive)
      nflows    flows.SimpleRealNVP(d, hidden_features=W, num_layers=K, num_blocks_per_layer=2)
  * training: Adam(lr), `steps` steps of `batch` rows, loss the batch's mean NLL. PyTorch
    batches are consecutive slices of epoch permutations from default_rng(seed + 1); glowflow
    draws its own (seeded) batches.
  * time: wall seconds of the fit alone (glowflow's fit call; the PyTorch loop). Memory: the
    peak resident set of a fresh process that imports the library, reads the table, fits and
    scores (ru_maxrss), so it includes each library's import.
  * threads: `--threads` for both (torch.set_num_threads, glowflow's threads=).
  * `--weight-decay W`: decoupled weight decay in every fit (glowflow's weight_decay=, on
    weight matrices only; PyTorch's torch.optim.AdamW(weight_decay=W), which decays every
    parameter). Default 0 (Adam).
  * `--holdout validation`: score rows carved out of the training rows instead of the test
    rows (the last round(0.2 n_train) of default_rng(100 + seed).permutation(n_train); the
    model then trains on the rest), to choose a setting such as the weight decay without
    looking at the test rows.
  * photoz: one-dimensional conditional density of galaxy's redshift given its six magnitudes
    (u g r i z y), the photometric-redshift problem: glowflow's spline flow of one column
    (VectorFlow(1, context=6, coupling="spline")), zuko's NSF of one feature with context 6,
    and the linear-Gaussian baseline (least squares of redshift on the magnitudes, the
    residuals' ML variance). Same split and standardisation (context too).
Each (table, library, seed) runs in its own process, one after another.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tables", "data")

# Per table: steps, batch, lr, K, W. sp500 is bench/tables/compare.sh's recipe (1,006 training
# rows overfit past ~200 steps); the large tables get longer fits and wider networks.
RECIPES = {
    "sp500": dict(steps=200, batch=128, lr=1e-3, K=4, W=32),
    "cities": dict(steps=3000, batch=512, lr=1e-3, K=8, W=64),
    "galaxy": dict(steps=3000, batch=512, lr=1e-3, K=8, W=64),
    "photoz": dict(steps=3000, batch=512, lr=1e-3, K=4, W=64),
}
# The file each table is read from, and its context columns (the rest are modelled).
FILES = {"photoz": "galaxy"}
CONTEXT = {"photoz": 6}
LIBRARIES = ["glowflow", "glowflow-ema", "glowflow-spline", "glowflow-spline-ema",
             "zuko-realnvp", "zuko-nsf", "nflows-realnvp"]
# Libraries that can model one column given a context.
ONE_COLUMN = ["glowflow-spline", "glowflow-spline-ema", "zuko-nsf"]


def read(table):
    """(modelled rows, context rows or None) of a table."""
    x = np.loadtxt(os.path.join(DATA, f"{FILES.get(table, table)}.csv"), delimiter=",",
                   skiprows=1, ndmin=2)
    k = CONTEXT.get(table, 0)
    if not k:
        return x, None
    return x[:, :x.shape[1] - k], x[:, x.shape[1] - k:]


def split(n, seed):
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(0.2 * n)
    return np.sort(perm[: n - n_test]), np.sort(perm[n - n_test:])


def one(table, lib, seed, threads, weight_decay=0.0, holdout="test"):
    """Fit one library on one table; returns its figures (run in a child process)."""
    r = RECIPES[table]
    x, ctx = read(table)
    train_idx, test_idx = split(len(x), seed)
    if holdout == "validation":
        perm = np.random.default_rng(100 + seed).permutation(len(train_idx))
        n_val = round(0.2 * len(train_idx))
        train_idx, test_idx = np.sort(train_idx[perm[n_val:]]), np.sort(train_idx[perm[:n_val]])
    train, test = x[train_idx], x[test_idx]
    ctrain, ctest = (None, None) if ctx is None else (ctx[train_idx], ctx[test_idx])
    d, k = x.shape[1], 0 if ctx is None else ctx.shape[1]
    if lib.startswith("glowflow"):
        import glowflow
        coupling = "spline" if "spline" in lib else "tanh"
        flow = glowflow.VectorFlow(d, context=k, flow_steps=r["K"], net_width=r["W"], net_depth=2,
                                   coupling=coupling)
        t0 = time.perf_counter()
        flow.fit(train, context=ctrain, steps=r["steps"], batch_size=r["batch"], lr=r["lr"],
                 seed=seed, progress=False, threads=threads, weight_decay=weight_decay,
                 ema_decay=0.99 if lib.endswith("-ema") else 0.0)
        seconds = time.perf_counter() - t0
        test_nll = float(-flow.log_prob(test, context=ctest).mean())
        params = flow.figures["parameters"]
    else:
        import torch
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        mean, std = train.mean(0), train.std(0)
        zt = torch.tensor((train - mean) / std, dtype=torch.float32)
        ze = torch.tensor((test - mean) / std, dtype=torch.float32)
        if ctx is not None:
            cm, cs = ctrain.mean(0), ctrain.std(0)
            zt = torch.hstack([zt, torch.tensor((ctrain - cm) / cs, dtype=torch.float32)])
            ze = torch.hstack([ze, torch.tensor((ctest - cm) / cs, dtype=torch.float32)])
        if lib.startswith("zuko"):
            import zuko
            make = zuko.flows.RealNVP if lib == "zuko-realnvp" else zuko.flows.NSF
            model = make(d, k, transforms=r["K"], hidden_features=(r["W"], r["W"]))
            log_prob = lambda z: model(z[:, d:] if k else None).log_prob(z[:, :d])  # noqa: E731
        else:
            from nflows.flows import SimpleRealNVP
            model = SimpleRealNVP(d, hidden_features=r["W"], num_layers=r["K"], num_blocks_per_layer=2)
            log_prob = model.log_prob
        opt = (torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=weight_decay)
               if weight_decay else torch.optim.Adam(model.parameters(), lr=r["lr"]))
        rng = np.random.default_rng(seed + 1)
        n, b = len(zt), min(r["batch"], len(zt))
        perm, at = rng.permutation(n), 0
        t0 = time.perf_counter()
        for _ in range(r["steps"]):
            if at + b > n:
                perm, at = rng.permutation(n), 0
            batch = zt[perm[at:at + b]]
            at += b
            loss = -log_prob(batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            test_nll = float(-log_prob(ze).double().mean()) + float(np.log(std).sum())
        params = sum(p.numel() for p in model.parameters())
    return dict(table=table, library=lib, seed=seed, test_nll=test_nll, seconds=seconds,
                parameters=int(params), peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                rows=len(x), columns=d, context=k, weight_decay=weight_decay, holdout=holdout, **r)


def gaussian_nll(table, seed):
    """Test NLL of a full-covariance Gaussian fitted to the training rows (the floor to beat);
    with context columns, of the linear-Gaussian regression (least squares on the context,
    maximum-likelihood residual covariance)."""
    x, ctx = read(table)
    tr, te = split(len(x), seed)
    if ctx is not None:
        design = np.hstack([ctx, np.ones((len(ctx), 1))])
        beta, *_ = np.linalg.lstsq(design[tr], x[tr], rcond=None)
        resid_tr, resid_te = x[tr] - design[tr] @ beta, x[te] - design[te] @ beta
        cov = np.atleast_2d(resid_tr.T @ resid_tr / len(tr))
        _, logdet = np.linalg.slogdet(cov)
        maha = np.einsum("ni,ij,nj->n", resid_te, np.linalg.inv(cov), resid_te)
        return float(np.mean(0.5 * (maha + logdet + x.shape[1] * math.log(2 * math.pi))))
    mu, cov = x[tr].mean(0), np.cov(x[tr].T, bias=True)
    diff = x[te] - mu
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return float(np.mean(0.5 * (maha + logdet + x.shape[1] * math.log(2 * math.pi))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", default=list(RECIPES))
    ap.add_argument("--libraries", nargs="+", default=LIBRARIES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--holdout", choices=["test", "validation"], default="test")
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--one", nargs=3, metavar=("TABLE", "LIBRARY", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.threads, a.weight_decay, a.holdout)))
        return
    runs = []
    for table in a.tables:
        name = FILES.get(table, table)
        if not os.path.exists(os.path.join(DATA, f"{name}.csv")):
            sys.exit(f"{table}: no bench/tables/data/{name}.csv (bench/tables/fetch.sh '' {name})")
        for lib in a.libraries:
            if table in CONTEXT and lib not in ONE_COLUMN:
                continue
            for seed in a.seeds:
                out = subprocess.run([sys.executable, __file__, "--one", table, lib, str(seed),
                                      "--threads", str(a.threads), "--weight-decay", str(a.weight_decay),
                                      "--holdout", a.holdout], capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{table} {lib} seed {seed} failed:\n{out.stderr}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append(run)
                print(f"{table:7} {lib:15} seed {seed}: {a.holdout} NLL {run['test_nll']:.4f}, "
                      f"{run['seconds']:.2f} s, {run['peak_mb']:.0f} MB", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    if a.weight_decay:
        print(f"weight decay {a.weight_decay:g} in every fit")
    print(f"| table (rows x columns; steps x batch) | model | parameters | {a.holdout} NLL (nats/row), "
          "seeds " + " / ".join(map(str, a.seeds)) + " | mean | fit s (mean) | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for table in a.tables:
        r = RECIPES[table]
        first = True
        for lib in a.libraries:
            mine = [x for x in runs if x["table"] == table and x["library"] == lib]
            if not mine:
                continue
            given = f" given {mine[0]['context']}" if mine[0].get("context") else ""
            head = (f"{table} ({mine[0]['rows']:,} x {mine[0]['columns']}{given}; "
                    f"{r['steps']} x {r['batch']})" if first else "")
            first = False
            nll = " / ".join(f"{x['test_nll']:.3f}" for x in mine)
            print(f"| {head} | {lib} | {mine[0]['parameters']:,} | {nll} | "
                  f"{np.mean([x['test_nll'] for x in mine]):.3f} | {np.mean([x['seconds'] for x in mine]):.2f} | "
                  f"{max(x['peak_mb'] for x in mine):.0f} |")
        if a.holdout != "test":
            continue
        g = [gaussian_nll(table, s) for s in a.seeds]
        what = "linear-Gaussian regression" if table in CONTEXT else "full-covariance Gaussian"
        print(f"|  | {what} | | {' / '.join(f'{v:.3f}' for v in g)} | {np.mean(g):.3f} | | |")


if __name__ == "__main__":
    main()
