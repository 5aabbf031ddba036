"""Teacher-forced log-likelihoods on cached prefixes (the engine's ``loglik``).

Two ways to score a candidate continuation:

* *shared query* (:func:`score_tree`, :func:`score_tree_packed`): each prompt runs once; its
  last position's logits score every candidate's first token, and a candidate's further tokens
  run as a branch on top of the prompt (padded: the batch cache repeated per candidate and
  extended by its tokens; packed: the candidates laid after their prompt, a tree mask letting
  each see the prompt and itself only);
* *whole sequence* (:func:`score`, :func:`score_packed`): prompt and candidate run as one
  sequence and the last ``need`` tokens are scored (candidates that merge with their prompt's
  last token, or every candidate when queries are not shared).
"""

from __future__ import annotations

import torch

from iclft.icl.kv import KV


def score_tree(kv: KV, prefixes, queries, branches) -> list[list[float]]:
    """Shared-query scoring in the padded layout: the queries run batched on their prefix
    caches; the batch cache is then repeated once per multi-token candidate and extended
    by that candidate's tokens (right-padded, after every real token of its row)."""
    ids, mask, pos, cache = kv.batch_inputs(prefixes, queries)
    last = kv.forward(ids, mask, pos, cache, logits_to_keep=1)[:, -1]
    lp0 = torch.log_softmax(last.float(), dim=-1)
    out = [[float(lp0[r, t[0]]) for t in br] for r, br in enumerate(branches)]
    multi = [(r, k) for r, br in enumerate(branches) for k, t in enumerate(br) if len(t) > 1]
    if not multi:
        return out
    dev = kv.device
    M, T = len(multi), max(len(branches[r][k]) - 1 for r, k in multi)
    bids = torch.full((M, T), kv.pad_id, dtype=torch.long)
    bmask = torch.zeros((M, T), dtype=torch.long)
    for m, (r, k) in enumerate(multi):
        t = branches[r][k][:-1]
        bids[m, : len(t)] = torch.tensor(t, dtype=torch.long)
        bmask[m, : len(t)] = 1
    sel = torch.tensor([r for r, _ in multi], device=dev)
    cache.batch_select_indices(sel)  # (M, H, slots, d): row r's cache once per candidate
    bmask = torch.cat([mask[sel], bmask.to(dev)], dim=1)
    bpos = pos[sel, -1:] + 1 + torch.arange(T, device=dev)[None]
    logits = kv.forward(bids.to(dev), bmask, bpos, cache, logits_to_keep=T)
    lp = torch.log_softmax(logits.float(), dim=-1)  # (M, T, V)
    n_real = sum(len(branches[r][k]) - 1 for r, k in multi)
    kv.stats.branch_tokens += n_real
    kv.stats.padded_tokens += M * T - n_real
    for m, (r, k) in enumerate(multi):
        t = torch.tensor(branches[r][k][1:], device=dev)
        out[r][k] += float(lp[m, : len(t)].gather(-1, t[:, None]).sum())
    return out


def score_tree_packed(kv: KV, prefixes, queries, branches) -> list[list[float]]:
    """Shared-query scoring in the packed layout: each row is a tree, its query (trunk)
    followed by its candidates as branches that see the trunk and themselves only; logits
    are kept at the trunk's last token and the branches' tokens."""
    base = max(prefixes, key=len)
    cache = kv.packed_cache(base)
    ids: list[int] = []
    pos: list[int] = []
    rows: list[int] = []
    branch: list[int] = []
    at: list[int] = []  # pack positions whose logits are kept
    where: list[list[list[int]]] = []  # per row, per candidate: indices into ``at``
    for r, (p, q, brs) in enumerate(zip(prefixes, queries, branches)):
        n0 = len(p) + len(q)
        ids += q
        pos += range(len(p), n0)
        rows += [r] * len(q)
        branch += [-1] * len(q)
        at.append(len(ids) - 1)
        trunk_end = len(at) - 1
        where.append([])
        for k, t in enumerate(brs):
            inputs = t[:-1]
            start = len(ids)
            ids += inputs
            pos += range(n0, n0 + len(inputs))
            rows += [r] * len(inputs)
            branch += [k] * len(inputs)
            where[r].append([trunk_end, *range(len(at), len(at) + len(inputs))])
            at += range(start, start + len(inputs))
    n_query = sum(len(q) for q in queries)
    kv.stats.suffix_tokens += n_query
    kv.stats.branch_tokens += len(ids) - n_query
    kv.stats.packed_batches += 1
    dev = kv.device
    rows_t, branch_t = torch.tensor(rows), torch.tensor(branch)
    lead = torch.full((len(base),), -1, dtype=torch.long)
    plen = torch.tensor([len(p) for p in prefixes])
    mask = kv.pack_mask(
        rows_t, torch.cat([lead, rows_t]), plen, branch_t, torch.cat([lead, branch_t])
    )
    x = torch.tensor([ids], device=dev)
    logits = kv.forward(
        x, mask, torch.tensor([pos], device=dev), cache, torch.tensor(at, device=dev)
    )
    lp = torch.log_softmax(logits[0].float(), dim=-1)  # (len(at), V)
    out = []
    for r, brs in enumerate(branches):
        row = []
        for k, t in enumerate(brs):
            idx = torch.tensor(where[r][k], device=dev)
            row.append(float(lp[idx].gather(-1, torch.tensor(t, device=dev)[:, None]).sum()))
        out.append(row)
    return out


def score(kv: KV, prefixes, suffixes, need: list[int]) -> list[float]:
    """Sum of log-probabilities of the last ``need[b]`` tokens of each suffix (batched)."""
    ids, mask, pos, cache = kv.batch_inputs(prefixes, suffixes)
    K = max(need) + 1
    logp = torch.log_softmax(kv.forward(ids, mask, pos, cache, K).float(), dim=-1)
    out = []
    for b, n in enumerate(need):
        target = ids[b, -n:]
        out.append(float(logp[b, K - n - 1 : K - 1].gather(-1, target[:, None]).sum()))
    return out


def score_packed(kv: KV, prefixes, suffixes, need: list[int]) -> list[float]:
    """As ``score``, in the packed layout: logits only at the positions predicting each
    suffix's last ``need[b]`` tokens."""
    cache, ids, pos, rows, slot_row, plen, ends = kv.pack_inputs(prefixes, suffixes)
    dev = kv.device
    at = torch.cat([torch.arange(e - n, e) for e, n in zip(ends.tolist(), need)])
    mask = kv.pack_mask(rows, slot_row, plen)
    logits = kv.forward(ids[None].to(dev), mask, pos[None].to(dev), cache, at.to(dev))[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    lp = lp.gather(-1, ids.to(dev)[at.to(dev) + 1][:, None])[:, 0]
    return [float(x.sum()) for x in lp.split(need)]
