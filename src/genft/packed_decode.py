"""Greedy decoding over packed rows (`greedy_decode`): rows that share a cached prefix decode together in
preallocated KV buffers (`packed_rows.RowCache`) at their own lengths, a finished row's slot refilled at once,
and prompt-lookup draft tokens (`NgramDrafts`) verified while few rows are live -- the same greedy tokens in
fewer steps.  The attention it runs under is `packed_rows`'.
"""
from __future__ import annotations

import time
from collections import deque

import torch

from .packed_rows import RowCache, RowState


# --------------------------------------------------------------------------- greedy decoding with refill


class NgramDrafts:
    """Draft tokens for one row by prompt lookup: the tokens that followed the latest earlier occurrence of the
    row's last n tokens (n = `n_max` down to 1) in its own context (prompt and generated tokens so far).

    Repetition loops, copied phrases and answer formats repeat earlier text, so such drafts are often what
    greedy decoding produces next; `greedy_decode` only ever keeps a draft token the model itself predicts.
    """

    def __init__(self, tokens: list[int], n_max: int = 3) -> None:
        self.toks: list[int] = []
        self.n_max = n_max
        self.last: dict[tuple[int, ...], int] = {}  # n-gram -> end (exclusive) of its latest occurrence
        for t in tokens:
            self.append(t)

    def append(self, tok: int) -> None:
        # The n-grams that end at the current last token become "earlier occurrences" once a token follows.
        end = len(self.toks)
        for n in range(1, min(self.n_max, end) + 1):
            self.last[tuple(self.toks[end - n : end])] = end
        self.toks.append(tok)

    def draft(self, k: int) -> list[int]:
        if k <= 0:
            return []
        toks = self.toks
        for n in range(min(self.n_max, len(toks) - 1), 0, -1):
            end = self.last.get(tuple(toks[len(toks) - n :]))
            if end is not None:
                return toks[end : end + k]
        return []


class _Slots:
    """The decoding state of one `greedy_decode` call.  Slots 0..A-1 are active (A = len(slot_row)); per slot:
    the row it decodes (`slot_row`), its keys in the `RowCache` buffers (`lens`), the token it feeds next
    (`pending`), its `NgramDrafts` (built when the slot first drafts) and `reach` (draft tokens it may feed
    next).  `out` holds every row's generated tokens, `stats` the counters.  The methods bind what they use per
    token to locals: this is the hot path of generation.
    """

    def __init__(self, forward, next_tokens, rows, prefix, max_new, finished, device, cap, prefill_tokens, stats,
                 prefix_ids, verify_rows, max_draft) -> None:
        self.forward, self.next_tokens, self.finished, self.device = forward, next_tokens, finished, device
        self.rows, self.prefix, self.max_new, self.stats = rows, prefix, max_new, stats
        self.cap, self.prefill_tokens, self.verify_rows, self.max_draft = cap, prefill_tokens, verify_rows, max_draft
        self.p = 0 if not prefix else int(prefix[0][0].shape[2])
        self.out: list[list[int]] = [[] for _ in rows]
        # + the padded draft positions of a step
        self.max_len = max(len(r) for r in rows) + max_new + max(0, max_draft)
        self.cache = RowCache()
        self.slot_row: list[int] = []  # row index of each active slot
        self.lens: list[int] = []  # keys in the buffer per slot
        self.pending: list[int] = []  # the token each slot feeds next
        self.drafts: list[NgramDrafts | None] = []  # per slot, built when the slot first drafts
        self.reach: list[int] = []  # per slot: draft tokens it may feed next (doubles while all kept, else kept + 1)
        self.shared = list(prefix_ids or [])

    def count(self, key, val) -> None:
        self.stats[key] = self.stats.get(key, 0) + val

    def refill(self, queue: deque, free: int) -> None:
        """Prefill waiting rows into (at most `free`) free slots: the next rows of `queue` (longest first),
        together as one packed sequence of at most `prefill_tokens` tokens (a longer row alone).  Each row's
        keys are copied into its slot's buffers (allocated at the first prefill); a row that its first token
        already finishes takes no slot."""
        t0 = time.perf_counter()
        rows, out, cache, p, slot_row = self.rows, self.out, self.cache, self.p, self.slot_row
        take = [queue.popleft()]
        total = len(rows[take[0]])
        while queue and len(take) < free and total + len(rows[queue[0]]) <= self.prefill_tokens:
            total += len(rows[queue[0]])
            take.append(queue.popleft())
        ids, pos, spans = [], [], []
        for r in take:
            spans.append((len(ids), len(ids) + len(rows[r])))
            ids += rows[r]
            pos += range(p, p + len(rows[r]))
        ids_t = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos_t = torch.tensor([pos], dtype=torch.long, device=self.device)
        state = RowState("prefill", q_pos=pos_t[0], prefix=self.prefix, spans=spans)
        cache.mode = "prefill"
        hidden = self.forward(ids_t, pos_t, state, cache)[0]
        toks = self.next_tokens(hidden[torch.tensor([b - 1 for _, b in spans], device=hidden.device)]).tolist()
        self.count("forward_tokens", len(ids))
        self.count("prefill_tokens", len(ids))
        self.count("prefill_calls", 1)
        new = cache.new_kv()
        if cache.bufs is None:
            cache.allocate(new, self.cap, self.max_len)
        start = 0
        for r, tok in zip(take, toks):
            m = len(rows[r])
            out[r].append(int(tok))
            if len(out[r]) < self.max_new and not self.finished(out[r]):
                s = len(slot_row)
                for (kb, vb), (k, v) in zip(cache.bufs, new):
                    kb[s, :, :m] = k[0, :, start : start + m]
                    vb[s, :, :m] = v[0, :, start : start + m]
                slot_row.append(r)
                self.lens.append(m)
                self.pending.append(int(tok))
                self.drafts.append(None)
                self.reach.append(max(1, self.max_draft // 2))
            start += m
        cache.new = {}
        self.count("generate_prefill_s", time.perf_counter() - t0)

    def step(self) -> None:
        """One decoding step of the active rows, each feeding its pending token and up to
        min(max_draft, verify_rows // live rows - 1) draft tokens (`NgramDrafts` over `prefix_ids` and its own
        tokens; at most its `reach`), with the lm_head where a prediction can be kept: after the pending token
        and after each draft token.  `_keep` keeps the verified predictions; `retire` frees finished rows' slots.

        A row with fewer drafts than the step's q - 1 is padded: its pending token again, at its last real
        position (a position table must not be indexed past the row's own end); nothing reads the padded
        outputs, and no real query sees the padded keys, which later steps overwrite.
        """
        t0 = time.perf_counter()
        slot_row, lens, pending, drafts, reach, out = (self.slot_row, self.lens, self.pending, self.drafts,
                                                       self.reach, self.out)
        max_new, p, device = self.max_new, self.p, self.device
        a = len(slot_row)
        k = min(self.max_draft, self.verify_rows // a - 1)
        props = []
        for s in range(a):
            if k > 0 and drafts[s] is None:
                drafts[s] = NgramDrafts(self.shared + self.rows[slot_row[s]] + out[slot_row[s]])
            props.append(drafts[s].draft(min(k, reach[s], max_new - len(out[slot_row[s]]) - 1)) if k > 0 else [])
        q = 1 + max(len(d) for d in props)
        ids = [[pending[s]] + d + [pending[s]] * (q - 1 - len(d)) for s, d in enumerate(props)]
        pos = [[lens[s] + p + min(j, len(d)) for j in range(q)] for s, d in enumerate(props)]
        lens_t = torch.tensor(lens, dtype=torch.long, device=device)
        ids_t = torch.tensor(ids, dtype=torch.long, device=device)
        pos_t = torch.tensor(pos, dtype=torch.long, device=device)
        state = RowState("decode", q_pos=pos_t, prefix=self.prefix, lens=lens_t + 1)
        cache = self.cache
        cache.mode, cache.active, cache.write_at, cache.span = "decode", a, lens_t, max(lens) + q
        hidden = self.forward(ids_t, pos_t, state, cache)
        # the lm_head only where a prediction can be kept: the next token and after each draft token
        sel_s = torch.tensor([s for s, d in enumerate(props) for _ in range(len(d) + 1)], device=hidden.device)
        sel_j = torch.tensor([j for d in props for j in range(len(d) + 1)], device=hidden.device)
        flat = self.next_tokens(hidden[sel_s, sel_j]).tolist()
        preds, at = [], 0
        for d in props:
            preds.append(flat[at : at + len(d) + 1])
            at += len(d) + 1
        if q > 1:
            self.count("draft_tokens", sum(len(d) for d in props))
        self.count("forward_tokens", a * q)
        self.count("decode_steps", 1)
        self.retire(self._keep(props, preds))
        self.count("generate_decode_s", time.perf_counter() - t0)

    def _keep(self, props: list[list[int]], preds: list[list[int]]) -> list[int]:
        """Keep each row's predictions up to and including the first one that differs from its draft (or ends
        the row); returns the slots whose rows are finished, in slot order.  A row's draft limit (`reach`)
        doubles while all of its drafts are kept and drops to one more than it kept otherwise."""
        slot_row, lens, pending, drafts, reach, out = (self.slot_row, self.lens, self.pending, self.drafts,
                                                       self.reach, self.out)
        max_new, finished = self.max_new, self.finished
        done = []
        for s, d in enumerate(props):
            r = slot_row[s]
            kept = 0
            for j, tok in enumerate(preds[s]):
                tok = int(tok)
                lens[s] += 1  # the key of the token fed at j (pending, then draft j - 1) is now the row's
                out[r].append(tok)
                if drafts[s] is not None:
                    drafts[s].append(tok)
                if len(out[r]) >= max_new or finished(out[r]):
                    done.append(s)
                    break
                if j == len(d) or d[j] != tok:  # the next prediction followed a wrong draft (or none): stop here
                    pending[s] = tok
                    break
                kept += 1
            if d:  # a row whose drafts are wrong feeds fewer: a step's cost grows with its query positions
                self.count("draft_accepted", kept)
                reach[s] = min(self.max_draft, 2 * len(d)) if kept == len(d) else kept + 1
        return done

    def retire(self, done: list[int]) -> None:
        """Free the slots of finished rows (`done`, in slot order): the last active row moves into each freed
        slot, its keys copied in the buffers, so slots 0..A-1 stay the active ones."""
        slot_row, lens, pending, drafts, reach = self.slot_row, self.lens, self.pending, self.drafts, self.reach
        for s in reversed(done):
            last = len(slot_row) - 1
            if s != last:
                m = lens[last]
                for kb, vb in self.cache.bufs:
                    kb[s, :, :m] = kb[last, :, :m]
                    vb[s, :, :m] = vb[last, :, :m]
                slot_row[s], lens[s], pending[s] = slot_row[last], lens[last], pending[last]
                drafts[s], reach[s] = drafts[last], reach[last]
            for per_slot in (slot_row, lens, pending, drafts, reach):
                per_slot.pop()


def greedy_decode(
    forward,
    next_tokens,
    rows: list[list[int]],
    prefix: list | None,
    max_new: int,
    finished,
    device,
    capacity: int = 32,
    prefill_tokens: int = 1024,
    stats=None,
    prefix_ids: list[int] | None = None,
    verify_rows: int = 48,
    max_draft: int = 8,
) -> list[list[int]]:
    """Greedy continuations of `rows` (token lists after a shared cached prefix), at most `max_new` tokens each.

    forward(ids [B, q], pos [B, q], state, cache) -> hidden [B, q, hidden] runs the decoder stack (under
    `rows_attention`); next_tokens(hidden [n, hidden]) -> [n] greedy token ids; finished(tokens) -> bool says
    whether a row's generated tokens end it (EOS, a stop sequence, max_new).

    Up to `capacity` rows decode together (`_Slots`).  A row that finishes leaves its slot at once (the last
    row moves into it: `_Slots.retire`) and waiting rows refill the free slots, longest first, prefilled
    together as one packed sequence of at most `prefill_tokens` tokens (a longer row alone: `_Slots.refill`).
    Every row sees exactly [prefix | its own tokens] at positions p, p+1, ..., so its greedy tokens do not
    depend on which rows share its batch.

    Verified drafts (`_Slots.step`).  A decoding step costs about the same with a few more query positions
    (every weight is read once per step, and the matmuls of a few rows run far below the machine's peak), so
    each live row also feeds up to min(max_draft, verify_rows // live rows - 1) draft tokens (`NgramDrafts` over
    `prefix_ids` and its own tokens) after its next token, and the step predicts at every one of them: drafting
    runs while at most half of `verify_rows` rows are live.  A row's own limit starts at max_draft // 2,
    doubles while all of its drafts are kept and drops to one more than it kept otherwise (text that does not
    repeat earlier text costs little).  A row keeps the predictions up to and including the first one that
    differs from its draft (`_Slots._keep`): each kept token is the model's greedy token given exactly the
    tokens before it (the drafts it follows were right), so the output is the one token-by-token decoding
    gives, in fewer steps (up to the float rounding any other batch shape brings: tests and
    benchmarks/eval_speed.py compare the texts with lm-eval's `hf`).  max_draft 0 turns drafting off.
    """
    n = len(rows)
    if n == 0:
        return []
    queue = deque(sorted(range(n), key=lambda i: (-len(rows[i]), i)))
    cap = max(1, min(capacity, n))
    dec = _Slots(forward, next_tokens, rows, prefix, max_new, finished, device, cap, prefill_tokens,
                 stats if stats is not None else {}, prefix_ids, verify_rows, max_draft)
    refill_at = max(1, cap // 4)
    while queue or dec.slot_row:
        free = cap - len(dec.slot_row)
        # Refill once a quarter of the slots is free (newcomers prefill together), or when every waiting row fits.
        if queue and free and (not dec.slot_row or free >= min(refill_at, len(queue))):
            dec.refill(queue, free)
        elif dec.slot_row:
            dec.step()
    dec.count("generated_tokens", sum(len(o) for o in dec.out))
    return dec.out
