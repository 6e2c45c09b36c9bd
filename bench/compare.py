"""Run `glowflow bench` and bench/pytorch/bench.py alternately and tabulate median ratios."""

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="flex")
    ap.add_argument("--out", default="target/bench/results.jsonl")
    ap.add_argument("workloads", nargs="+")
    a = ap.parse_args()
    if a.rounds < 1:
        sys.exit("--rounds must be at least 1")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    here = os.path.dirname(os.path.abspath(__file__))
    torch_device = "cuda" if a.device == "cuda" else "cpu"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    results = {w: {"ours": [], "pytorch": []} for w in a.workloads}
    with open(a.out, "w") as log:
        for r in range(a.rounds):
            for w in a.workloads:
                ours = run([a.ours, "bench", "--workload", w, "--threads", str(a.threads),
                            "--device", a.device, "--json"], env)
                theirs = run([sys.executable, "-W", "ignore", os.path.join(here, "pytorch", "bench.py"),
                              "--workload", w, "--threads", str(a.threads),
                              "--device", torch_device], env)
                for side, res in (("ours", ours), ("pytorch", theirs)):
                    results[w][side].append(res)
                    log.write(json.dumps(dict(res, side=side, round=r)) + "\n")
                print(f"round {r + 1}/{a.rounds} {w}: ours {ours['ms_per_step']:.1f} ms, "
                      f"pytorch {theirs['ms_per_step']:.1f} ms", file=sys.stderr)
    print(f"\n{a.rounds} alternating rounds, {a.threads} threads, device {a.device}; medians\n")
    print("| workload | ours ms/step | PyTorch ms/step | ours/PyTorch steps/s | ours peak RSS MiB | PyTorch peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for w in a.workloads:
        o = results[w]["ours"]
        t = results[w]["pytorch"]
        ratio = statistics.median(x["steps_per_s"] / y["steps_per_s"] for x, y in zip(o, t))
        med = lambda rs, k: statistics.median(x[k] for x in rs if x.get(k) is not None)
        print(f"| {w} | {med(o, 'ms_per_step'):.1f} | {med(t, 'ms_per_step'):.1f} | "
              f"**{ratio:.2f}×** | {med(o, 'peak_rss_mib'):.0f} | {med(t, 'peak_rss_mib'):.0f} |")


if __name__ == "__main__":
    main()
