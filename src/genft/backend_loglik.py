"""`genft-hf`'s loglikelihood: requests grouped by context, each distinct context's suffix (after its group's
shared prefix) followed by a trie of its continuations, a batch of contexts packed into one sequence with a
"tree" visibility matrix, so every item is one forward pass whatever its number of labels.  A mixin of
`genft.backend.GenftHFLM` (its model plumbing: `_fast_ok`, `_prefix_kv`, `_rows_forward`, `_head`, `stats`);
anything the fast path does not cover goes to `HFLM` through `super()`.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .packed_rows import RowState, rows_attention
from .prefix_groups import plan_prefix_groups

eval_logger = logging.getLogger("genft.backend")


class LoglikelihoodRows:
    """HFLM's loglikelihood on packed rows (mixed into `GenftHFLM` before `HFLM`)."""

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """HFLM's loglikelihood, with each distinct string tokenized once per call: lm-eval encodes an item's
        context again for every label (`_encode_pair`), so a k-shot prompt was tokenized once per label."""
        self._tok_memo: dict | None = {}
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._tok_memo = None

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        memo = getattr(self, "_tok_memo", None)
        if memo is None or kwargs:
            return super().tok_encode(string, add_special_tokens=add_special_tokens,
                                      left_truncate_len=left_truncate_len, **kwargs)
        key = (string, add_special_tokens, left_truncate_len)
        if key not in memo:
            memo[key] = super().tok_encode(string, add_special_tokens=add_special_tokens,
                                           left_truncate_len=left_truncate_len)
        return list(memo[key])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not self._fast_ok():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        max_len = self.max_length
        ctx_index: dict[tuple[int, ...], int] = {}
        ctxs: list[tuple[int, ...]] = []
        conts: list[dict[tuple[int, ...], None]] = []
        req_keys: list[tuple[int, tuple[int, ...]]] = []
        for _, context_enc, continuation_enc in requests:
            assert len(context_enc) > 0 and len(continuation_enc) > 0
            assert len(continuation_enc) <= max_len
            # HFLM's input window: (ctx + cont)[-(max_length + 1):][:-1]; scored = the last len(cont) positions.
            whole = (list(context_enc) + list(continuation_enc))[-(max_len + 1) :]
            if len(context_enc) + len(continuation_enc) > max_len + 1:
                eval_logger.warning("genft-hf: context + continuation exceed max_length; truncating from the left")
            ctx = tuple(whole[: len(whole) - len(continuation_enc)])
            cont = tuple(continuation_enc)
            row = ctx_index.setdefault(ctx, len(ctxs))
            if row == len(ctxs):
                ctxs.append(ctx)
                conts.append({})
            conts[row][cont] = None
            req_keys.append((row, cont))

        answers: dict[tuple[int, tuple[int, ...]], tuple[float, bool]] = {}
        bs = self._rows_per_batch(override_bs)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0), desc="Running loglikelihood requests (genft-hf)")
        for p, members in plan_prefix_groups(ctxs, min_prefix=self.prefix_min_tokens):
            kv = self._prefix_kv(ctxs[members[0]][:p]) if p else None
            # Longest rows first (as HFLM): padding stays small within a batch.
            work = {r: len(ctxs[r]) - p + sum(len(c) - 1 for c in conts[r]) for r in members}
            members = sorted(members, key=lambda r: (-work[r], r))
            for start in range(0, len(members), bs):
                chunk = members[start : start + bs]
                for (row, cont), ans in self._score_rows(chunk, ctxs, conts, p, kv).items():
                    answers[(row, cont)] = ans
                pbar.update(sum(len(conts[r]) for r in chunk))
        pbar.close()

        res = []
        for (request_str, _, _), key in zip(requests, req_keys):
            ans = answers[key]
            res.append(ans)
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, ans)
        return res

    def _score_rows(self, rows, ctxs, conts, p, kv) -> dict:
        """One forward pass for a batch of distinct contexts and all their continuations (tree attention)."""
        device = self.device
        layouts = []  # per row: tokens, positions, parents (-1 = causal suffix), scored index lists
        for r in rows:
            suffix = list(ctxs[r][p:])
            s = len(suffix)
            tokens, positions = suffix[:], list(range(p, p + s))
            node_of: dict[tuple[int, int], int] = {}  # (parent node or -1, token) -> row index
            parent: list[int] = []  # for trie nodes: row index of the parent (or -1 = context end)
            scored = {}
            for cont in conts[r]:
                idx = [s - 1]  # the logits for cont[0] come from the last context position
                par = -1
                for depth, tok in enumerate(cont[:-1]):
                    key = (par, tok)
                    if key not in node_of:
                        node_of[key] = len(tokens)
                        tokens.append(tok)
                        positions.append(p + s + depth)
                        parent.append(par)
                    par = node_of[key]
                    idx.append(par)
                scored[cont] = idx
            layouts.append((tokens, positions, s, parent, scored))
        # The rows are packed into ONE sequence (no padding): each row's tokens see the shared prefix and their
        # own row only (block-diagonal visibility; RowState adds the sliding window where a layer has one).
        offsets, total = [], 0
        for tokens, *_ in layouts:
            offsets.append(total)
            total += len(tokens)
        ids = torch.empty((1, total), dtype=torch.long)
        pos = torch.empty((1, total), dtype=torch.long)
        allowed = torch.zeros((1, total, total), dtype=torch.bool)
        for (tokens, positions, s, parent, _), o in zip(layouts, offsets):
            n = len(tokens)
            ids[0, o : o + n] = torch.tensor(tokens)
            pos[0, o : o + n] = torch.tensor(positions)
            allowed[0, o : o + s, o : o + s] = torch.ones(s, s, dtype=torch.bool).tril()
            if n > s:
                allowed[0, o + s : o + n, o : o + s] = True  # continuation tokens see the whole context
                for j, par in enumerate(parent):  # ... and their own trie path
                    q = o + s + j
                    allowed[0, q, q] = True
                    while par != -1:
                        allowed[0, q, o + par] = True
                        par = parent[par - s]
        pos = pos.to(device)
        spans = [(o, o + len(layout[0])) for layout, o in zip(layouts, offsets)]
        state = RowState("masked", q_pos=pos, prefix=kv, allowed=allowed.to(device), spans=spans)
        self.stats["forward_tokens"] += total
        with rows_attention(self._causal_lm()):
            hidden = self._rows_forward(ids.to(device), pos, state, None)[0]

        # lm_head only where a continuation token is scored (deduplicated).
        flat: dict[tuple[int, int], int] = {}
        for b, (_, _, _, _, scored) in enumerate(layouts):
            for idx in scored.values():
                for q in idx:
                    flat.setdefault((b, q), len(flat))
        sel = torch.tensor([offsets[b] + q for b, q in flat], device=device)
        logprobs = F.log_softmax(self._head(hidden[sel]), dim=-1, dtype=self.softmax_dtype)
        greedy = logprobs.argmax(dim=-1)

        out = {}
        for b, r in enumerate(rows):
            for cont, idx in layouts[b][4].items():
                where = torch.tensor([flat[(b, q)] for q in idx], device=device)
                target = torch.tensor(cont, dtype=torch.long, device=device)
                lp = logprobs[where].gather(1, target[:, None]).squeeze(1)
                out[(r, cont)] = (float(lp.sum()), bool((greedy[where] == target).all()))
        return out
