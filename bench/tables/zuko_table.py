#!/usr/bin/env python3
"""Reference density estimate on a real table: zuko's RealNVP, plus a full-covariance Gaussian.

    bench/.venv/bin/python bench/tables/zuko_table.py --data bench/tables/data/yeast.csv \
        --steps 2000 --batch 256 --transforms 4 --hidden 64 --threads 1

Protocol (meant to be reproduced exactly by glowflow):
  * data: a numeric CSV with one header row (bench/tables/fetch.sh writes one).
  * split: perm = numpy.random.default_rng(seed).permutation(n); the last round(fraction * n)
    entries of perm (Python's round) are the test rows, the rest the training rows; both sets are
    then kept in file order, so --split-file PATH (one 0/1 per data row, 1 = test), which
    overrides this, gives identical results for the same split.
  * standardisation: z = (x - mean) / std with the training rows' mean and population std
    (ddof = 0). All NLLs are reported in the data's own units, nats per row:
    nll_x = nll_z + sum(log std).
  * model: zuko.flows.RealNVP(d, transforms=K, hidden_features=(W, W)), zuko's defaults
    otherwise (alternating checkered masks, affine couplings, standard normal base);
    initialised after torch.manual_seed(seed).
  * training: Adam(lr), `steps` steps, loss = mean NLL of the batch. Batches are consecutive
    slices of epoch permutations (of the training rows, indexed in file order) drawn from
    numpy.random.default_rng(seed + 1); a slice that would run past the end of the permutation
    is dropped and a new permutation starts
    (with batch >= n_train every batch is the whole training set, in permuted order).
  * gaussian_test_nll: mean and covariance fitted by maximum likelihood (ddof = 0) to the
    training rows in data units, evaluated on the test rows (nats per row).
--write-split PATH writes the split used as a 0/1 file (for glowflow), then goes on.
Prints one JSON line; "seconds" is the wall time of the training loop alone.
"""
import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import zuko


def load_csv(path):
    x = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if not np.isfinite(x).all():
        raise SystemExit(f"{path}: non-finite values")
    return x


def split(n, fraction, seed, split_file):
    if split_file:
        with open(split_file) as fh:
            first = fh.readline().strip()
        if first == "row,test":  # glowflow's split.csv: 1-based row, 1 = test
            flags = np.loadtxt(split_file, dtype=np.int64, delimiter=",", skiprows=1, ndmin=2)[:, 1]
        else:
            flags = np.loadtxt(split_file, dtype=np.int64, ndmin=1)
        if flags.shape != (n,) or not np.isin(flags, (0, 1)).all():
            raise SystemExit(f"{split_file}: need {n} lines of 0 or 1")
        return np.flatnonzero(flags == 0), np.flatnonzero(flags == 1)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(fraction * n)
    return np.sort(perm[: n - n_test]), np.sort(perm[n - n_test :])


def gaussian_nll(train, test):
    """Mean NLL (nats per row) of `test` under the MLE Gaussian of `train`."""
    mu = train.mean(0)
    cov = np.cov(train, rowvar=False, bias=True).reshape(train.shape[1], train.shape[1])
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (test - mu).T)
    d = train.shape[1]
    return float(0.5 * (z**2).sum(0).mean() + np.log(np.diag(chol)).sum() + 0.5 * d * math.log(2 * math.pi))


@torch.no_grad()
def flow_nll_rows(flow, z, log_std_sum, chunk=4096):
    """Per-row NLL in data units, evaluated in float64 on a copy of the flow."""
    f64 = copy.deepcopy(flow).double()
    zt = torch.from_numpy(z)
    parts = [-f64().log_prob(zt[i : i + chunk]) for i in range(0, len(zt), chunk)]
    return torch.cat(parts).numpy() + log_std_sum


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--split-file", default=None, help="one 0/1 per row, 1 = test, or glowflow's split.csv; overrides --test-fraction")
    p.add_argument("--write-split", default=None, help="write the split used (0/1 per row) to this path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--transforms", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    x = load_csv(a.data)
    n, d = x.shape
    tr_idx, te_idx = split(n, a.test_fraction, a.seed, a.split_file)
    if len(tr_idx) < 2 or len(te_idx) < 1:
        raise SystemExit("split leaves too few rows")
    train, test = x[tr_idx], x[te_idx]
    if a.write_split:
        flags = np.zeros(n, dtype=np.int64)
        flags[te_idx] = 1
        np.savetxt(a.write_split, flags, fmt="%d")

    mean, std = train.mean(0), train.std(0)
    if (std <= 0).any():
        raise SystemExit("a column is constant on the training rows")
    log_std_sum = float(np.log(std).sum())
    ztr, zte = (train - mean) / std, (test - mean) / std

    torch.manual_seed(a.seed)
    flow = zuko.flows.RealNVP(d, transforms=a.transforms, hidden_features=(a.hidden, a.hidden))
    params = sum(q.numel() for q in flow.parameters())
    opt = torch.optim.Adam(flow.parameters(), lr=a.lr)

    data = torch.from_numpy(ztr.astype(np.float32))
    rng = np.random.default_rng(a.seed + 1)
    b = min(a.batch, len(data))
    perm, pos = rng.permutation(len(data)), 0
    t0 = time.perf_counter()
    last_loss = float("nan")
    for _ in range(a.steps):
        if pos + b > len(perm):
            perm, pos = rng.permutation(len(data)), 0
        batch = data[torch.from_numpy(perm[pos : pos + b])]
        pos += b
        loss = -flow().log_prob(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_loss = loss.item()
    seconds = time.perf_counter() - t0

    flow.eval()
    te_rows = flow_nll_rows(flow, zte, log_std_sum)
    out = {
        "test_nll": float(te_rows.mean()),
        "train_nll": float(flow_nll_rows(flow, ztr, log_std_sum).mean()),
        "gaussian_test_nll": gaussian_nll(train, test),
        "test_nll_median": float(np.median(te_rows)),
        "test_nll_max": float(te_rows.max()),
        "params": params,
        "seconds": round(seconds, 3),
        "steps_per_s": round(a.steps / seconds, 2) if seconds > 0 else None,
        "last_batch_loss": last_loss + log_std_sum,
        "n_train": len(train),
        "n_test": len(test),
        "dims": d,
        "data": a.data,
        "config": {k: getattr(a, k) for k in ("seed", "steps", "batch", "lr", "transforms", "hidden", "threads", "test_fraction", "split_file")},
        "zuko": zuko.__version__,
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
