"""Independent PyTorch reference of the m6train model, written from the spec in
DESIGN.md section 3 (not from the C++), used to check m6train's loss and
gradients (check_step.py) and as the peer in the CPU benchmark (bench_torch.py).

The model is functional: parameters live in a dict keyed by the global tensor
names of the export (tok_emb.weight, layers.{l}.attn.qkv.weight, ...), so the
weights of an m6train export load as they are and d loss / d tensor compares
name by name with m6train's gradients.

Shapes: B micro-batch, T sequence, d width, H heads (dh = d/H), F FFN width,
E experts, V vocab, N = B*T tokens of the micro-batch.
"""

import json
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

LN_EPS = 1e-5

# Defaults of core/config/config.h for the keys a config JSON may leave out.
_MODEL_DEFAULTS = dict(vocab_size=256, max_seq_len=128, d_model=128, n_heads=4, n_layers=4, d_ff=512)
_MOE_DEFAULTS = dict(every=0, experts=0, router="topk", top_k=1, prototypes=0, capacity_factor=1.25,
                     eval_capacity_factor=2.0, min_capacity=4, normalize_gates="auto",
                     aux_loss_coef=0.01, z_loss_coef=0.001)


@dataclass
class MoeSpec:
    every: int
    experts: int
    router: str  # "topk" | "prototypes"
    top_k: int
    prototypes: int
    capacity_factor: float
    eval_capacity_factor: float
    min_capacity: int
    normalize: bool  # normalize_gates resolved (auto = topk and top_k > 1)
    aux_loss_coef: float
    z_loss_coef: float

    @property
    def groups(self):  # softmax groups: 1 for topk, k for prototypes
        return 1 if self.router == "topk" else self.prototypes

    @property
    def slots(self):  # S, slots per token
        return self.top_k if self.router == "topk" else self.prototypes


@dataclass
class ModelSpec:
    vocab_size: int
    max_seq_len: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    moe: MoeSpec
    sharing_groups: int = 0

    def is_moe_layer(self, l):
        return self.moe.every > 0 and l % self.moe.every == self.moe.every - 1

    def param_set(self, l):
        """The layer whose tensors logical layer l uses (Pseudo-to-Real sharing:
        set floor(l*G/L), represented by the first layer of the set)."""
        g = self.sharing_groups
        if g == 0:
            return l
        s = l * g // self.n_layers
        return next(m for m in range(self.n_layers) if m * g // self.n_layers == s)


def _resolve_normalize(value, router, top_k):
    v = value.lower() if isinstance(value, str) else value
    if v == "auto":
        return router == "topk" and top_k > 1
    if v in (True, "true"):
        return True
    if v in (False, "false"):
        return False
    raise ValueError(f"model.moe.normalize_gates: unknown value {value!r}; allowed: auto|true|false")


def spec_from_config(config):
    """config: the resolved config as a dict (nested sections like the YAML)."""
    if isinstance(config, str):
        config = json.loads(config)
    m = dict(_MODEL_DEFAULTS)
    m.update({k: v for k, v in config.get("model", {}).items() if k not in ("moe", "sharing")})
    moe = dict(_MOE_DEFAULTS)
    moe.update(config.get("model", {}).get("moe", {}))
    if moe["router"] not in ("topk", "prototypes"):
        raise ValueError(f"model.moe.router: unknown value {moe['router']!r}; allowed: topk|prototypes")
    ms = MoeSpec(every=int(moe["every"]), experts=int(moe["experts"]), router=moe["router"],
                 top_k=int(moe["top_k"]), prototypes=int(moe["prototypes"]),
                 capacity_factor=float(moe["capacity_factor"]),
                 eval_capacity_factor=float(moe["eval_capacity_factor"]),
                 min_capacity=int(moe["min_capacity"]),
                 normalize=_resolve_normalize(moe["normalize_gates"], moe["router"], int(moe["top_k"])),
                 aux_loss_coef=float(moe["aux_loss_coef"]), z_loss_coef=float(moe["z_loss_coef"]))
    spec = ModelSpec(vocab_size=int(m["vocab_size"]), max_seq_len=int(m["max_seq_len"]),
                     d_model=int(m["d_model"]), n_heads=int(m["n_heads"]), n_layers=int(m["n_layers"]),
                     d_ff=int(m["d_ff"]), moe=ms,
                     sharing_groups=int(config.get("model", {}).get("sharing", {}).get("groups", 0)))
    if spec.d_model % spec.n_heads:
        raise ValueError(f"d_model ({spec.d_model}) must be divisible by n_heads ({spec.n_heads})")
    if ms.every > 0 and ms.experts % ms.groups:
        raise ValueError(f"experts ({ms.experts}) must be divisible by prototypes ({ms.groups})")
    return spec


# ---- parameter names, shapes and initialisation ---------------------------------


def param_shapes(spec):
    """OrderedDict name -> shape of every tensor of the export (every logical layer)."""
    d, F, V = spec.d_model, spec.d_ff, spec.vocab_size
    out = OrderedDict()
    out["tok_emb.weight"] = (V, d)
    out["pos_emb.weight"] = (spec.max_seq_len, d)
    for l in range(spec.n_layers):
        p = f"layers.{l}."
        out[p + "ln1.weight"] = (d,)
        out[p + "ln1.bias"] = (d,)
        out[p + "attn.qkv.weight"] = (3 * d, d)
        out[p + "attn.qkv.bias"] = (3 * d,)
        out[p + "attn.proj.weight"] = (d, d)
        out[p + "attn.proj.bias"] = (d,)
        out[p + "ln2.weight"] = (d,)
        out[p + "ln2.bias"] = (d,)
        if spec.is_moe_layer(l):
            out[p + "moe.router.weight"] = (spec.moe.experts, d)
            for e in range(spec.moe.experts):
                q = f"{p}moe.experts.{e}."
                out[q + "fc1.weight"] = (F, d)
                out[q + "fc1.bias"] = (F,)
                out[q + "fc2.weight"] = (d, F)
                out[q + "fc2.bias"] = (d,)
        else:
            out[p + "mlp.fc1.weight"] = (F, d)
            out[p + "mlp.fc1.bias"] = (F,)
            out[p + "mlp.fc2.weight"] = (d, F)
            out[p + "mlp.fc2.bias"] = (d,)
    out["ln_f.weight"] = (d,)
    out["ln_f.bias"] = (d,)
    return out


def layer_of(name):
    """Logical layer index of a tensor name, or None (embeddings, ln_f)."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "layers" else None


def init_params(spec, seed=0, dtype=torch.float32):
    """Weights drawn as DESIGN.md section 3 says (N(0, 0.02); residual output
    projections N(0, 0.02/sqrt(2L)); biases 0; LN 1/0). The values do not match
    m6train's counter-based RNG: for self-tests and benchmarks only."""
    g = torch.Generator().manual_seed(seed)
    resid_std = 0.02 / math.sqrt(2 * spec.n_layers)
    out = OrderedDict()
    for name, shape in param_shapes(spec).items():
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
            t = torch.ones(shape, dtype=dtype)
        elif name.endswith(".bias"):
            t = torch.zeros(shape, dtype=dtype)
        else:
            std = resid_std if (name.endswith("attn.proj.weight") or name.endswith("fc2.weight")) else 0.02
            t = (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype)
        out[name] = t
    return out


# ---- the model ---------------------------------------------------------------------


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm
    return (x - mu) / torch.sqrt(var + LN_EPS) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def attention(x, w_qkv, b_qkv, w_proj, b_proj, n_heads):
    """x [B,T,d] -> [B,T,d]; qkv columns: q = 0..d, k = d..2d, v = 2d..3d, head h
    = columns h*dh..(h+1)*dh of each."""
    B, T, d = x.shape
    dh = d // n_heads
    qkv = x @ w_qkv.t() + b_qkv  # [B,T,3d]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    q, k, v = (t.reshape(B, T, n_heads, dh).transpose(1, 2) for t in (q, k, v))  # [B,H,T,dh]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(dh))  # [B,H,T,T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    att = torch.softmax(scores, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, d)
    return y @ w_proj.t() + b_proj


def ffn(x, w1, b1, w2, b2):
    return gelu_tanh(x @ w1.t() + b1) @ w2.t() + b2


def capacity(spec, n_tokens, capacity_factor):
    """C = max(min_capacity, ceil(cf * N * S / E)); cf 0 = dropless (every slot
    fits). The product is formed left to right in double, as a C++ expression
    `cf * N * S / E` would be."""
    m = spec.moe
    if capacity_factor == 0:
        return n_tokens * m.slots
    return max(m.min_capacity, math.ceil(capacity_factor * n_tokens * m.slots / m.experts))


def capacity_keep(choice, n_experts, cap):
    """choice [N,S] expert ids -> keep [N,S] bool. Slot-major claiming: all
    first choices in token order, then all second choices, ...; a slot that
    finds its expert full is dropped."""
    N, S = choice.shape
    used = torch.zeros(n_experts, dtype=torch.long)
    keep = torch.zeros(N, S, dtype=torch.bool)
    for s in range(S):
        e = choice[:, s]
        onehot = torch.nn.functional.one_hot(e, n_experts)  # [N,E]
        rank = (onehot.cumsum(0) - 1).gather(1, e[:, None])[:, 0]  # earlier tokens of slot s on e
        keep[:, s] = used[e] + rank < cap
        used += onehot.sum(0)
    return keep


def route(spec, logits):
    """logits [N,E] -> (choice [N,S] expert ids, gate [N,S], probs [N,G,E/G],
    margin: the smallest gap between a chosen and the best unchosen probability,
    which says how close the discrete choice is to flipping)."""
    m = spec.moe
    N, E = logits.shape
    G = m.groups
    gs = E // G
    probs = torch.softmax(logits.reshape(N, G, gs), dim=-1)  # [N,G,gs]
    # Descending and stable, so equal probabilities keep the lower index first.
    sorted_p, order = torch.sort(probs.detach(), dim=-1, descending=True, stable=True)
    if m.router == "topk":
        choice = order[:, 0, :m.top_k]  # [N,S]
        gate = probs[:, 0, :].gather(1, choice)
        margin = (sorted_p[:, 0, m.top_k - 1] - sorted_p[:, 0, m.top_k]).min().item() if m.top_k < E else math.inf
    else:
        local = order[..., 0]  # [N,G] top-1 inside each group
        choice = local + torch.arange(G)[None, :] * gs
        gate = probs.gather(2, local[..., None])[..., 0]
        margin = (sorted_p[..., 0] - sorted_p[..., 1]).min().item() if gs > 1 else math.inf
    if m.normalize:
        gate = gate / gate.sum(-1, keepdim=True)
    return choice, gate, probs, margin


def moe_layer(spec, x, params, prefix, capacity_factor):
    """x [N,d] -> (y [N,d], aux, z, stats). Selection and dropping are discrete
    (no gradient); gradients reach the router through gates, P (aux) and z."""
    m = spec.moe
    N, d = x.shape
    E, G = m.experts, m.groups
    gs = E // G
    logits = x @ params[prefix + "router.weight"].t()  # [N,E], no bias
    choice, gate, probs, margin = route(spec, logits)
    cap = capacity(spec, N, capacity_factor)
    keep = capacity_keep(choice, E, cap)

    y = torch.zeros_like(x)
    for e in range(E):
        n_idx, s_idx = torch.nonzero((choice == e) & keep, as_tuple=True)
        if n_idx.numel() == 0:
            continue
        q = f"{prefix}experts.{e}."
        h = ffn(x[n_idx], params[q + "fc1.weight"], params[q + "fc1.bias"],
                params[q + "fc2.weight"], params[q + "fc2.bias"])
        y = y.index_add(0, n_idx, gate[n_idx, s_idx][:, None] * h)

    # aux: per group, (E/G) * sum_e f_e * P_e with f_e = demand_e / (N * slots
    # of the group) counted before dropping; averaged over groups.
    demand = torch.bincount(choice.reshape(-1), minlength=E).to(x.dtype)  # [E]
    slots_per_group = m.slots // G
    f = (demand / (N * slots_per_group)).reshape(G, gs)
    P = probs.mean(0)  # [G,gs]
    aux = (gs * (f * P).sum(-1)).mean()
    z = (torch.logsumexp(logits.reshape(N, G, gs), dim=-1) ** 2).mean(0).mean()
    stats = dict(capacity=cap, demand=[int(v) for v in demand.tolist()],
                 kept=[int(((choice == e) & keep).sum()) for e in range(E)],
                 dropped=int((~keep).sum()), slots=N * m.slots, margin=margin)
    return y, aux, z, stats


@dataclass
class Output:
    loss: torch.Tensor
    ce: torch.Tensor
    aux: list  # per MoE layer, tensors
    z: list
    stats: list  # per MoE layer, dicts (capacity, demand, kept, dropped, margin)


def forward(spec, params, inputs, targets, capacity_factor=None):
    """params: name -> tensor (all names of param_shapes, or with sharing at
    least the first layer of each set); inputs/targets [B,T] integer tensors,
    targets < 0 are ignored. capacity_factor defaults to the train one."""
    if capacity_factor is None:
        capacity_factor = spec.moe.capacity_factor
    inputs = inputs.long()
    targets = targets.long()
    B, T = inputs.shape
    if T > spec.max_seq_len:
        raise ValueError(f"sequence length {T} exceeds max_seq_len {spec.max_seq_len}")
    d = spec.d_model
    x = params["tok_emb.weight"][inputs] + params["pos_emb.weight"][:T]  # [B,T,d]
    aux, z, stats = [], [], []
    for l in range(spec.n_layers):
        p = f"layers.{spec.param_set(l)}."
        h = layer_norm(x, params[p + "ln1.weight"], params[p + "ln1.bias"])
        x = x + attention(h, params[p + "attn.qkv.weight"], params[p + "attn.qkv.bias"],
                          params[p + "attn.proj.weight"], params[p + "attn.proj.bias"], spec.n_heads)
        h = layer_norm(x, params[p + "ln2.weight"], params[p + "ln2.bias"])
        if spec.is_moe_layer(l):
            y, a, zl, st = moe_layer(spec, h.reshape(B * T, d), params, p + "moe.", capacity_factor)
            x = x + y.reshape(B, T, d)
            aux.append(a)
            z.append(zl)
            stats.append(dict(st, layer=l))
        else:
            x = x + ffn(h, params[p + "mlp.fc1.weight"], params[p + "mlp.fc1.bias"],
                        params[p + "mlp.fc2.weight"], params[p + "mlp.fc2.bias"])
    x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"])
    logits = x @ params["tok_emb.weight"].t()  # [B,T,V], tied head
    logp = torch.log_softmax(logits, dim=-1)
    valid = targets >= 0
    nll = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # [B,T]
    count = int(valid.sum())
    ce = (nll * valid).sum() / max(count, 1)
    loss = ce
    for a in aux:
        loss = loss + spec.moe.aux_loss_coef * a
    for zl in z:
        loss = loss + spec.moe.z_loss_coef * zl
    return Output(loss=loss, ce=ce, aux=aux, z=z, stats=stats)


def leaf_params(spec, tensors, dtype):
    """Leaf tensors (requires_grad) for the model from name -> array/tensor. With
    sharing, only the first layer of each set is a leaf; the other logical
    layers' names are not used by forward (see shared_grads)."""
    out = OrderedDict()
    for name in param_shapes(spec):
        l = layer_of(name)
        if l is not None and spec.param_set(l) != l:
            continue
        t = torch.as_tensor(tensors[name]).to(dtype).clone().requires_grad_(True)
        out[name] = t
    return out


def grads_by_name(spec, leaves):
    """name -> gradient for every export name; a logical layer that shares a
    parameter set gets the set's total gradient (what the optimizer applies)."""
    out = OrderedDict()
    for name in param_shapes(spec):
        l = layer_of(name)
        src = name
        if l is not None and spec.param_set(l) != l:
            src = f"layers.{spec.param_set(l)}." + name.split(".", 2)[2]
        g = leaves[src].grad
        out[name] = torch.zeros_like(leaves[src]) if g is None else g
    return out
