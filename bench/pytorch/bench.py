"""PyTorch reference of `glowflow bench`: the same workloads, the same math, timed the same way.

Usage: python bench.py --workload NAME [--steps N] [--warmup 3] [--threads T] [--device cpu|cuda]
Prints one JSON object like `glowflow bench --json`.

Training workloads time whole steps (forward, backward, Adam update) after warm-up steps, which
include ActNorm's data-dependent initialisation; every step reads the loss back to the host.
"""

import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- layers (all on [N, C, H, W])

class ActNorm(nn.Module):
    """y = (x + b) * exp(logs); b, logs from the first batch's per-channel mean and std."""

    def __init__(self, c):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.initialized = False

    @torch.no_grad()
    def _init(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).std(dim=1).reshape(1, -1, 1, 1)
        self.b.data.copy_(-mean)
        self.logs.data.copy_(-torch.log(std + 1e-6))
        self.initialized = True

    def forward(self, x):
        if not self.initialized:
            self._init(x)
        hw = x.shape[2] * x.shape[3]
        return (x + self.b) * torch.exp(self.logs), (hw * self.logs.sum()).expand(x.shape[0])

    def inverse(self, y):
        return y * torch.exp(-self.logs) - self.b


class InvConv1x1Lu(nn.Module):
    """W = P L (U + diag(sign_s * exp(log_s))), from the LU factors of a random rotation."""

    def __init__(self, c, gen):
        super().__init__()
        w0 = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))[0]
        p, l, u = torch.linalg.lu(w0)
        s = torch.diagonal(u)
        self.register_buffer("p", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.l = nn.Parameter(torch.tril(l, -1).float())
        self.u = nn.Parameter(torch.triu(u, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def weight(self):
        l = self.l * self.mask + self.eye
        u = self.u * self.mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ l @ u

    @staticmethod
    def apply(x, w):
        n, c, h, wd = x.shape
        if h * wd == 1:
            return (x.reshape(n, c) @ w.T).reshape(n, c, 1, 1)
        return (w @ x.reshape(n, c, h * wd)).reshape(n, c, h, wd)

    def forward(self, x):
        hw = x.shape[2] * x.shape[3]
        return self.apply(x, self.weight()), (hw * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y):
        w_inv = torch.linalg.inv(self.weight().double()).float()
        return self.apply(y, w_inv)


class Mlp(nn.Module):
    """in -> hidden (ReLU) x depth -> out on [N, C, 1, 1] vectors."""

    def __init__(self, cin, cout, hidden, depth):
        super().__init__()
        dims = [cin] + [hidden] * depth + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i + 1 < len(self.layers):
                h = F.relu(h)
        return h.reshape(h.shape[0], -1, 1, 1)


class PlainConvNet(nn.Module):
    """conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-initialised conv3x3, all with biases."""

    def __init__(self, cin, cout, width):
        super().__init__()
        self.c1 = nn.Conv2d(cin, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 1)
        self.c3 = nn.Conv2d(width, cout, 3, padding=1)
        nn.init.zeros_(self.c3.weight)
        nn.init.zeros_(self.c3.bias)

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.c1(x)))))


class ZeroConv2d(nn.Module):
    """Zero-initialised conv3x3 whose output is scaled by exp(3 * logs)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x):
        return self.conv(x) * torch.exp(3 * self.logs)


class GlowConvNet(nn.Module):
    """Glow's coupling CNN: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> ZeroConv."""

    def __init__(self, cin, cout, width):
        super().__init__()
        self.c1 = nn.Conv2d(cin, width, 3, padding=1, bias=False)
        self.n1 = ActNorm(width)
        self.c2 = nn.Conv2d(width, width, 1, bias=False)
        self.n2 = ActNorm(width)
        self.out = ZeroConv2d(width, cout)

    def forward(self, x):
        h = F.relu(self.n1(self.c1(x))[0])
        h = F.relu(self.n2(self.c2(h))[0])
        return self.out(h)


class AffineCoupling(nn.Module):
    """Net of the conditioning half gives (shift, raw) for the other half.
    tanh form: y_b = x_b * exp(tanh(raw) * alpha + beta) + shift;
    sigmoid form (Glow): y_b = (x_b + shift) * sigmoid(raw + 2)."""

    def __init__(self, net, swap, tanh):
        super().__init__()
        self.net, self.swap, self.tanh = net, swap, tanh
        if tanh:
            self.alpha = nn.Parameter(torch.ones(1))
            self.beta = nn.Parameter(torch.zeros(1))

    def _split(self, x):
        c = x.shape[1]
        lo, hi = x[:, : c // 2], x[:, c // 2:]
        return (hi, lo) if self.swap else (lo, hi)

    def _join(self, xa, yb):
        return torch.cat([yb, xa] if self.swap else [xa, yb], 1)

    def _params(self, xa, cb):
        h = self.net(xa)
        shift, raw = h[:, :cb], h[:, cb:]
        if self.tanh:
            return shift, torch.tanh(raw) * self.alpha + self.beta
        return shift, F.logsigmoid(raw + 2.0)

    def forward(self, x):
        xa, xb = self._split(x)
        shift, log_scale = self._params(xa, xb.shape[1])
        if self.tanh:
            yb = xb * torch.exp(log_scale) + shift
        else:
            yb = (xb + shift) * torch.exp(log_scale)
        return self._join(xa, yb), log_scale.reshape(x.shape[0], -1).sum(1)

    def inverse(self, y):
        xa, yb = self._split(y)
        shift, log_scale = self._params(xa, yb.shape[1])
        if self.tanh:
            xb = (yb - shift) * torch.exp(-log_scale)
        else:
            xb = yb * torch.exp(-log_scale) - shift
        return self._join(xa, xb)


class Sequence(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        ld = torch.zeros(x.shape[0], device=x.device)
        for layer in self.layers:
            x, l = layer(x)
            ld = ld + l
        return x, ld

    def inverse(self, z):
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


def std_normal_log_prob(z):
    d = z[0].numel()
    return -0.5 * z.reshape(z.shape[0], -1).pow(2).sum(1) - 0.5 * d * LN_2PI


def gaussian_log_prob(z, mean, logs):
    d = z[0].numel()
    t = (z - mean) * torch.exp(-logs)
    return -(0.5 * t.pow(2) + logs).reshape(z.shape[0], -1).sum(1) - 0.5 * d * LN_2PI


# ---------------------------------------------------------------- models

def glow2d(layers, hidden, gen):
    seq = []
    for k in range(layers):
        swap = k % 2 == 1
        seq += [ActNorm(2), InvConv1x1Lu(2, gen), AffineCoupling(Mlp(1, 2, hidden, 2), swap, True)]
    return Sequence(seq)


def probe_image_flow(gen):
    seq = []
    for k in range(8):
        seq += [ActNorm(12), InvConv1x1Lu(12, gen),
                AffineCoupling(PlainConvNet(6, 12, 256), k % 2 == 1, True)]
    return Sequence(seq)


def squeeze(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x):
    n, c, h, w = x.shape
    return x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * 2, w * 2)


class GlowImage(nn.Module):
    """Multi-scale Glow: per level squeeze -> K x [ActNorm, LU 1x1, sigmoid affine coupling]
    -> split with a learned conditional Gaussian prior; learned top prior."""

    def __init__(self, c, side, levels, depth, width, gen):
        super().__init__()
        self.flows, self.priors = nn.ModuleList(), nn.ModuleList()
        for l in range(levels):
            c, side = c * 4, side // 2
            seq = []
            for k in range(depth):
                swap = k % 2 == 1
                cond = c - c // 2 if swap else c // 2
                out = c - cond
                seq += [ActNorm(c), InvConv1x1Lu(c, gen),
                        AffineCoupling(GlowConvNet(cond, 2 * out, width), swap, False)]
            self.flows.append(Sequence(seq))
            if l + 1 < levels:
                self.priors.append(ZeroConv2d(c - c // 2, 2 * (c // 2)))
                c = c - c // 2
        self.top = nn.Parameter(torch.zeros(1, 2 * c, side, side))

    def _top(self, n):
        t = self.top.expand(n, -1, -1, -1)
        c = t.shape[1] // 2
        return t[:, :c], t[:, c:]

    def log_prob(self, x):
        n = x.shape[0]
        logp = torch.zeros(n, device=x.device)
        h = x
        for l, flow in enumerate(self.flows):
            y, ld = flow(squeeze(h))
            logp = logp + ld
            if l < len(self.priors):
                c = y.shape[1]
                z, keep = y[:, : c // 2], y[:, c // 2:]
                p = self.priors[l](keep)
                k = p.shape[1] // 2
                logp = logp + gaussian_log_prob(z, p[:, :k], p[:, k:])
                h = keep
            else:
                mean, logs = self._top(n)
                logp = logp + gaussian_log_prob(y, mean, logs)
        return logp

    @torch.no_grad()
    def sample(self, n, temperature, gen):
        def draw(mean, logs):
            eps = torch.randn(mean.shape, generator=gen, device="cpu").to(mean.device)
            return mean + torch.exp(logs) * eps * temperature

        h = draw(*self._top(n))
        for l in reversed(range(len(self.flows))):
            if l < len(self.priors):
                p = self.priors[l](h)
                k = p.shape[1] // 2
                h = torch.cat([draw(p[:, :k], p[:, k:]), h], 1)
            h = unsqueeze(self.flows[l].inverse(h))
        return h


# ---------------------------------------------------------------- workloads

def eight_gaussians(n, gen):
    k = torch.randint(0, 8, (n,), generator=gen)
    angle = k.float() * (2 * math.pi / 8)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * 2.0
    return (centres + 0.1 * torch.randn(n, 2, generator=gen)).reshape(n, 2, 1, 1)


def image_batch(n, gen, c=1):
    px = torch.randint(0, 256, (n, c, 32, 32), generator=gen).float()
    return (px + torch.rand(n, c, 32, 32, generator=gen)) / 256.0 - 0.5


def train_steps(model, lr, loss_fn, warmup, steps, sync):
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
    times, last = [], None
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        last = loss.item()  # host read-back: the step is complete
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times, last


def call_steps(fn, warmup, steps, sync):
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times, None


def run(workload, steps, warmup, device):
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if workload in ("probe2d", "seed2d"):
        layers, hidden, lr = (8, 128, 1e-3) if workload == "probe2d" else (32, 64, 1e-4)
        model = glow2d(layers, hidden, gen).to(device)
        x = eight_gaussians(1024, gen).to(device)

        def loss():
            z, ld = model(x)
            return -(std_normal_log_prob(z) + ld).mean()

        return train_steps(model, lr, loss, warmup, steps, sync)
    if workload == "probe-image":
        model = probe_image_flow(gen).to(device)
        x = torch.randn(16, 12, 16, 16, generator=gen).to(device)
        d = 12 * 16 * 16

        def loss():
            z, ld = model(x)
            return -(std_normal_log_prob(z) + ld).mean() / d

        return train_steps(model, 1e-3, loss, warmup, steps, sync)
    if workload in ("image", "sample", "paper-cifar"):
        # paper-cifar: the Glow paper's CIFAR-10 model (3x32x32, L = 3, K = 32, width 512).
        c, depth, width = (3, 32, 512) if workload == "paper-cifar" else (1, 6, 64)
        depth = STEPS_PER_LEVEL or depth
        model = GlowImage(c, 32, 3, depth, width, gen).to(device)
        x = image_batch(64, gen, c).to(device)
        d = c * 32 * 32
        if workload in ("image", "paper-cifar"):
            def loss():
                return ((-model.log_prob(x) + d * math.log(256)) / (d * math.log(2))).mean()

            # paper-cifar: lr 1e-5, the first steps of the paper's linear warm-up to 1e-3 (at
            # 3e-4 without one, K = 16 reached 8e5 bits/dim on its batch of noise within 4
            # steps); the time of a step does not depend on it.
            lr = 1e-5 if workload == "paper-cifar" else 3e-4
            return train_steps(model, lr, loss, warmup, steps, sync)
        with torch.no_grad():
            model.log_prob(x)  # ActNorm initialisation
        return call_steps(lambda: model.sample(64, 0.7, gen).cpu(), warmup, steps, sync)
    if workload == "density-grid":
        model = glow2d(32, 64, gen).to(device)
        with torch.no_grad():
            model(eight_gaussians(1024, gen).to(device))  # ActNorm initialisation
        b, size = 4.0, 256
        step = 2 * b / size
        coords = -b + (torch.arange(size, dtype=torch.float64) + 0.5) * step
        yy, xx = torch.meshgrid(coords.flip(0), coords, indexing="ij")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).float()

        def grid():
            out = []
            with torch.no_grad():
                for chunk in pts.split(8192):
                    z, ld = model(chunk.reshape(-1, 2, 1, 1).to(device))
                    out.append(torch.exp(std_normal_log_prob(z) + ld).cpu())
            return torch.cat(out)

        return call_steps(grid, warmup, steps, sync)
    raise SystemExit(f"--workload {workload}: unknown workload")


STEPS_PER_LEVEL = None  # --steps-per-level: K of the image training workloads

DEFAULT_STEPS = {"probe2d": 50, "seed2d": 50, "probe-image": 10, "image": 10, "sample": 5,
                 "density-grid": 5, "paper-cifar": 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, choices=sorted(DEFAULT_STEPS))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps-per-level", type=int,
                    help="image training workloads: flow steps per level instead of their own")
    a = ap.parse_args()
    global STEPS_PER_LEVEL
    if a.steps_per_level is not None and a.workload not in ("image", "paper-cifar"):
        raise SystemExit("--steps-per-level: applies to the image training workloads (image, paper-cifar) only")
    STEPS_PER_LEVEL = a.steps_per_level
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    steps = a.steps or DEFAULT_STEPS[a.workload]
    times, last = run(a.workload, steps, a.warmup, torch.device(a.device))
    total = sum(times)
    median = sorted(times)[len(times) // 2]
    print(json.dumps({
        "workload": a.workload,
        "backend": f"pytorch {torch.__version__} {a.device}",
        "threads": a.threads,
        "steps": steps,
        "warmup": a.warmup,
        "ms_per_step": 1e3 * total / steps,
        "ms_per_step_median": 1e3 * median,
        "steps_per_s": steps / total,
        # ru_maxrss is KiB on Linux: the process's peak resident set, like VmHWM.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "last_loss": last,
    }))


if __name__ == "__main__":
    main()
