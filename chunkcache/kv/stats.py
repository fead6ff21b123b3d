"""Cache-Craft attention statistics (arXiv 2502.15734, section 4.1), gathered while a prompt is computed.

For each chunk C_i of a layout and each layer, from the attention probabilities of C_i's computed rows
(averaged over heads):

* inter_l(C_i, C_j) / |C_j| for C_j in [template prefix, chunk 0, ..., chunk i-1]   (the template prefix
  without its first token: that token is the attention sink, whose mass says nothing about content),
* intra_l(C_i): mass inside C_i,
* per token: mass to everything before C_i (sink excluded), averaged over layers.

When only some rows of a chunk were computed (a partly recomputed request), totals are scaled from the
computed rows to |C_i| and tokens never computed keep no outside score of their own (NaN); see
``kv/build.capture``. Probabilities come from an explicit softmax (fused kernels do not return them), so
statistics are gathered only when records are created or captured.
"""

from __future__ import annotations

import torch

from chunkcache.engine.prompt import Layout

_BLOCK = 256


class AttentionStats:
    def __init__(self, layout: Layout, n_layers: int) -> None:
        self.layout = layout
        self.n_layers = n_layers
        n = len(layout.chunks)
        # segment boundaries: [sink+1, prefix end, chunk0 end, ...]; segment 0 = template, 1+i = chunk i
        self._bounds = [min(1, layout.prefix.end), layout.prefix.end] + [c.end for c in layout.chunks]
        self._seg_len = torch.tensor([max(1, self._bounds[k + 1] - self._bounds[k]) for k in range(n + 1)],
                                     dtype=torch.float32)
        self.inter = [torch.zeros(n_layers, i + 1) for i in range(n)]
        self.intra = [torch.zeros(n_layers) for _ in range(n)]
        self.rows = [torch.zeros(n_layers) for _ in range(n)]
        self.outside_sum = [torch.zeros(len(c)) for c in layout.chunks]
        self.outside_count = [torch.zeros(len(c)) for c in layout.chunks]

    def observe(self, model, layer: int, q_rot: torch.Tensor, k_rot: torch.Tensor, positions: torch.Tensor,
                pos_host: torch.Tensor) -> None:
        """Accumulate statistics of the computed rows that belong to chunks (``positions`` on the model's
        device, ``pos_host`` the same on the host: the row bookkeeping stays there, and each block of rows
        waits for the device once, to read back its attention mass)."""
        starts = torch.tensor([c.start for c in self.layout.chunks])
        ends = torch.tensor([c.end for c in self.layout.chunks])
        if starts.numel() == 0:
            return
        bounds = torch.tensor(self._bounds, device=positions.device)
        for b0 in range(0, pos_host.numel(), _BLOCK):
            pos = pos_host[b0:b0 + _BLOCK]
            which = torch.bucketize(pos, starts, right=True) - 1
            ok = (which >= 0) & (pos < ends[which.clamp_min(0)])
            if not bool(ok.any()):
                continue
            rows = torch.nonzero(ok).squeeze(1)
            on_dev = rows.to(positions.device, non_blocking=True)
            probs = model.attention_probs(layer, q_rot[:, b0:b0 + _BLOCK][:, on_dev], k_rot,
                                          positions[b0:b0 + _BLOCK][on_dev]).mean(0)
            cs = torch.nn.functional.pad(probs.cumsum(-1), (1, 0))  # cs[:, j] = mass of keys < j
            seg = (cs[:, bounds[1:]] - cs[:, bounds[:-1]]).cpu()  # [rows, n_chunks + 1]
            which_r = which[rows]
            offs = pos[rows] - starts[which_r]
            for ci in torch.unique(which_r).tolist():
                m = which_r == ci
                r = seg[m]
                self.inter[ci][layer] += (r[:, : ci + 1] / self._seg_len[: ci + 1]).sum(0)
                self.intra[ci][layer] += r[:, ci + 1].sum()
                self.rows[ci][layer] += int(m.sum())
                self.outside_sum[ci].index_add_(0, offs[m], r[:, : ci + 1].sum(1))
                self.outside_count[ci].index_add_(0, offs[m], torch.ones(int(m.sum())))

    def chunk(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inter [layers, i+1], intra [layers], outside [tokens]) for chunk i, scaled to |C_i| rows.

        Layers where no row of the chunk was computed are NaN; tokens never computed are NaN."""
        n = len(self.layout.chunks[i])
        rows = self.rows[i]
        scale = torch.where(rows > 0, n / rows.clamp_min(1), torch.full_like(rows, float("nan")))
        outside = self.outside_sum[i] / self.outside_count[i]
        return self.inter[i] * scale[:, None], self.intra[i] * scale, outside
